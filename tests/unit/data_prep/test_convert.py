"""The conversion framework: interrupted runs leave no partial file and resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from data_prep.convert import (
    ConversionError,
    Rejection,
    Sample,
    SourceCase,
    SplitOptions,
    convert_dataset,
)


@dataclass
class FakeCase(SourceCase):
    key: str
    root: Path
    files: tuple[Path, ...]
    crash: bool = False
    reject: bool = False
    skipped: list[Rejection] = field(default_factory=list)

    def convert(self) -> list[Sample]:
        if self.crash:  # a kill, not a failure of this file: it must stop the run
            raise KeyboardInterrupt("power cut")
        if self.reject:
            raise ConversionError(f"{self.key}: unusable")
        seed = int(self.key[1:])
        image = np.random.default_rng(seed).integers(0, 255, (16, 20), dtype=np.uint8)
        mask = np.zeros_like(image)
        mask[4:8, 5:9] = 1
        return [Sample(f"case{seed}", f"patient{seed}", image, (0.1, 0.1), mask, {"tirads": "TR3"})]


def _cases(root: Path, count: int, **flags) -> list[FakeCase]:
    cases = []
    for index in range(count):
        source = root / f"s{index}.bin"
        source.write_bytes(bytes([index]) * 10)
        cases.append(
            FakeCase(f"s{index}", root, (source,), **{k: v == index for k, v in flags.items()})
        )
    return cases


def _run(cases, out):
    return convert_dataset(cases, [], out, header={"source": "test"}, split=SplitOptions(folds=2),
                           options={}, progress=False)  # fmt: skip


def test_an_interrupted_run_leaves_no_partial_file_and_resumes(tmp_path):
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt, match="power cut"):
        _run(_cases(tmp_path / "in", 6, crash=3), out)
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"
    assert not (out / "datalist.json").exists()
    assert len(list((out / "images").iterdir())) == 3  # the cases before the crash are complete
    result = _run(_cases(tmp_path / "in", 6), out)
    assert (result.converted, result.reused, result.samples) == (3, 3, 6)
    # A damaged output or a changed source is converted again; the rest is reused.
    (out / "images" / "case1.nii.gz").write_bytes(b"broken")
    cases = _cases(tmp_path / "in", 6)
    (tmp_path / "in" / "s4.bin").write_bytes(b"changed")
    result = _run(cases, out)
    assert (result.converted, result.reused) == (2, 4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["cases"]) == 6
    assert all(len(s["outputs"]) == 2 for c in manifest["cases"] for s in c["samples"])


def test_rejected_cases_are_listed_and_the_run_goes_on(tmp_path):
    (tmp_path / "in").mkdir()
    result = _run(_cases(tmp_path / "in", 5, reject=2), tmp_path / "out")
    assert result.samples == 4
    assert result.ok
    assert "s2,s2: unusable" in (tmp_path / "out" / "rejected.csv").read_text()
    nothing = _run(_cases(tmp_path / "in", 1, reject=0), tmp_path / "none")
    assert not nothing.ok
    assert nothing.datalist is None


@dataclass
class TwoFrameCase(SourceCase):
    """A case whose second sample breaks the NIfTI writer after the first was written."""

    key: str
    root: Path
    files: tuple[Path, ...]
    skipped: list[Rejection] = field(default_factory=list)

    def convert(self) -> list[Sample]:
        image = np.full((16, 20), 7, dtype=np.uint8)
        # "//" makes no file name: the writer fails on the second sample, after the first.
        return [Sample(f"{self.key}_a", "p", image, None), Sample("//", "p", image + 1, None)]


def test_any_failure_of_one_case_is_a_rejection_and_leaves_none_of_its_outputs(tmp_path):
    (tmp_path / "in").mkdir()
    cases = _cases(tmp_path / "in", 5)
    crashing = FakeCase("s9", tmp_path / "in", (tmp_path / "in" / "s0.bin",))
    crashing.convert = lambda: 1 / 0  # type: ignore[method-assign]  # any exception type
    half = TwoFrameCase("half", tmp_path / "in", (tmp_path / "in" / "s1.bin",))
    result = _run([*cases, crashing, half], tmp_path / "out")
    assert result.samples == 5
    assert {r.path: r.stage for r in result.failed} == {"s9": "convert", "half": "write"}
    assert "ZeroDivisionError" in {r.path: r.reason for r in result.rejected}["s9"]
    assert not (tmp_path / "out" / "images" / "half_a.nii.gz").exists()  # not half a case
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["failed"] == 2
    assert "s9,s9: ZeroDivisionError" in (tmp_path / "out" / "rejected.csv").read_text()


def test_rejected_csv_and_manifest_are_written_when_the_split_refuses(tmp_path):
    (tmp_path / "in").mkdir()
    cases = _cases(tmp_path / "in", 1)
    with pytest.raises(ValueError, match="cannot fill"):
        _run(cases, tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert (tmp_path / "out" / "rejected.csv").is_file()
