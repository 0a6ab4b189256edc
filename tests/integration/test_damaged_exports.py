"""End to end: a folder of valid, damaged and duplicate DICOM exports through prep dicom and infer.

Every valid file is converted and inferred on; every other file is in the rejection list with a
stage and a reason; the exit codes are non-zero; the manifest, datalist and summary are written;
no output is half-written and no output byte holds the fake identity.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.data import save_net_with_metadata

from thyroid_monai.cli import main
from thyroid_monai.networks import MultitaskUNet

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _torchscript_model(path: Path) -> Path:
    torch.manual_seed(0)
    network = MultitaskUNet(num_classes=5, seg_classes=2, embedding_dim=16).eval()
    traced = torch.jit.trace(network, torch.rand(1, 1, 32, 32), strict=False)
    config = {"image_size": [32, 32], "label_grouping": "acr5", "use_level": True}
    save_net_with_metadata(traced, str(path.with_suffix("")),
                           more_extra_files={"train.json": json.dumps(config)})  # fmt: skip
    return path


@pytest.mark.filterwarnings("ignore")
def test_valid_files_pass_and_every_other_file_is_rejected_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import dicom_fuzz

    seeds = dicom_fuzz.write_seeds(tmp_path / "seeds")
    variants = dicom_fuzz.make_variants(seeds, tmp_path / "export", 60, seed=3, duplicates=2)
    (tmp_path / "export" / "notes.txt").write_text("not an image")
    valid = {v.path.name for v in variants if v.mutation is None}
    duplicates = {v.path.name for v in variants if v.mutation == "duplicate export"}

    code = main(["prep", "dicom", "--in", str(tmp_path / "export"), "--out", str(tmp_path / "data"),
                 "--salt", "e2e", "--folds", "2", "--no-progress"])  # fmt: skip
    assert code == 1  # some files failed; the rest is converted
    data = tmp_path / "data"
    with (data / "rejected.csv").open() as handle:
        rejected = {row["path"]: row for row in csv.DictReader(handle)}
    assert not valid & set(rejected)  # every valid file converted
    assert duplicates <= set(rejected)
    assert all(rejected[name]["stage"] == "read" for name in duplicates)
    assert "duplicate export" in rejected[sorted(duplicates)[0]]["reason"]
    assert rejected["notes.txt"]["stage"] == "skipped"
    assert all(row["reason"].strip() for row in rejected.values())
    manifest = json.loads((data / "manifest.json").read_text())
    datalist = json.loads((data / "datalist.json").read_text())
    converted = len(variants) + 1 - len(rejected)
    assert len(manifest["cases"]) == converted >= len(valid)
    assert len(datalist["training"]) + len(datalist["testing"]) == converted
    assert not [p for p in data.rglob("*") if ".tmp" in p.name]
    assert main(["audit", str(data), "--against", str(tmp_path / "seeds")]) == 0

    model = _torchscript_model(tmp_path / "model.ts")
    capsys.readouterr()
    code = main(["infer", "--model", str(model), "--in", str(tmp_path / "export"), "--out",
                 str(tmp_path / "infer"), "--salt", "e2e"])  # fmt: skip
    assert code == 1
    printed = capsys.readouterr()
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert len(summary["files"]) == len(variants)  # notes.txt is not an input type
    outcomes = [entry["outcome"] for entry in summary["files"]]
    assert outcomes.count("written") == len(summary["written"]) >= len(valid)
    assert outcomes.count("failed") == summary["failed"] > 0
    for entry in summary["written"]:
        case = tmp_path / "infer" / entry["case"]
        assert {p.name for p in case.iterdir()} >= {"report.json", "mask.nii.gz", "overlay.png"}
    assert not [p for p in (tmp_path / "infer").rglob("*") if ".tmp" in p.name]
    assert "FUZZ" not in printed.err  # the failures name files, never identities
    everything = b"".join(p.read_bytes() for p in (tmp_path / "infer").rglob("*") if p.is_file())
    assert b"FUZZ^PATIENT" not in everything
    assert b"MRN0FUZZ" not in everything
    shutil.rmtree(tmp_path / "export")
