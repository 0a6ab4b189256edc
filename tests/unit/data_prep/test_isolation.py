"""prep targets and audit isolate damaged files: reported, never crashed on."""

from __future__ import annotations

import csv
import json

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from data_prep.audit import audit_folder, read_source_identifiers
from data_prep.phantom_dicom import export_phantom_dicom
from thyroid_monai.cli import main
from thyroid_monai.synthetic import PhantomConfig


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    export = export_phantom_dicom(tmp_path_factory.mktemp("export"), 8, PhantomConfig(seed=5))
    out = tmp_path_factory.mktemp("data")
    assert main(["prep", "dicom", "--in", str(export), "--out", str(out), "--salt", "s",
                 "--folds", "2", "--labels", str(export / "labels.csv"),
                 "--no-progress"]) == 0  # fmt: skip
    return export, out


def test_targets_reject_an_item_whose_mask_is_gone_and_go_on(prepared, capsys):
    _, out = prepared
    datalist = json.loads((out / "datalist.json").read_text())
    victim = datalist["training"][0]
    (out / victim["label"]).rename(out / "moved.nii.gz")
    try:
        code = main(["prep", "targets", "--datalist", str(out / "datalist.json"),
                     "--no-progress"])  # fmt: skip
    finally:
        (out / "moved.nii.gz").rename(out / victim["label"])
    assert code == 1
    assert "1 failed" in capsys.readouterr().out
    with (out / "radiomics_rejected.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == [victim["case_id"]]
    updated = json.loads((out / "datalist.json").read_text())
    values = {i["case_id"]: i["radiomics"] for i in updated["training"] + updated["testing"]}
    assert all(v is None for v in values[victim["case_id"]])
    assert sum(any(v is not None for v in vs) for vs in values.values()) == len(values) - 1


def _deeply_nested(path, depth: int) -> None:
    dataset = pydicom.dcmread(path)
    inner = Dataset()
    inner.PatientName = "DEEP^PATIENT"
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedImageSequence = DicomSequence([inner])
        inner = outer
    dataset.ReferencedImageSequence = inner.ReferencedImageSequence
    dataset.save_as(path, enforce_file_format=True)


def test_audit_reports_damaged_files_in_the_folder_and_the_source(
    prepared, tmp_path, capsys, monkeypatch
):
    export, out = prepared
    source = tmp_path / "source"
    source.mkdir()
    first = sorted(export.rglob("view*.dcm"))[0]
    (source / "ok.dcm").write_bytes(first.read_bytes())
    (source / "damaged.dcm").write_bytes(first.read_bytes())
    read = pydicom.dcmread

    def fragile(path, *args, **kwargs):  # the RecursionError a damaged source once gave
        if str(path).endswith("damaged.dcm"):
            raise RecursionError("maximum recursion depth exceeded")
        return read(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", fragile)
    found = read_source_identifiers(source)
    assert found.values  # the readable file still gives its identifiers
    assert found.unreadable == [("damaged.dcm", "RecursionError: maximum recursion depth exceeded")]
    assert main(["audit", str(out), "--against", str(source)]) == 1
    assert "source damaged.dcm" in capsys.readouterr().out
    monkeypatch.undo()
    # A damaged DICOM file inside the audited folder is a problem, not a crash.
    broken = out / "dicom" / "zz_broken.dcm"
    damaged = bytearray(first.read_bytes())
    damaged[132 + 200 :] = b"\xff" * (len(damaged) - 332)
    broken.write_bytes(bytes(damaged))
    try:
        report = audit_folder(out)
    finally:
        broken.unlink()
    assert any(p.startswith("dicom/zz_broken.dcm") for p in report.problems)


def test_audit_does_not_recurse_into_trouble_on_a_deeply_nested_source(prepared, tmp_path):
    export, _ = prepared
    source = tmp_path / "deep"
    source.mkdir()
    target = source / "deep.dcm"
    target.write_bytes(sorted(export.rglob("view*.dcm"))[0].read_bytes())
    _deeply_nested(target, 150)
    found = read_source_identifiers(source)
    assert found.unreadable == []
    assert any("PHANTOM" in value for value in found.values)
