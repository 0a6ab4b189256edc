"""prep dicom: SEG and PNG masks, labels, de-identification, rejects, resume, audit, targets."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pydicom
import pytest
from PIL import Image

from data_prep.audit import audit_folder, source_identifiers
from data_prep.phantom_dicom import export_phantom_dicom
from thyroid_monai.cli import main
from thyroid_monai.io.dicom_write import PatientInfo, write_ultrasound_dicom
from thyroid_monai.io.nifti import read_nifti_2d
from thyroid_monai.radiomics import FEATURES
from thyroid_monai.synthetic import Phantom, PhantomConfig

SALT = ["--salt", "test-salt"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    return export_phantom_dicom(folder, 12, PhantomConfig(seed=3))


def _prep(source, out, *extra):
    return main(["prep", "dicom", "--in", str(source), "--out", str(out), "--folds", "3",
                 "--no-progress", *SALT, *extra])  # fmt: skip


def test_seg_masks_labels_and_deidentification(export, tmp_path, capsys, assert_no_phi):
    out = tmp_path / "data"
    assert _prep(export, out, "--labels", str(export / "labels.csv")) == 0
    datalist = json.loads((out / "datalist.json").read_text())
    items = datalist["training"] + datalist["testing"]
    assert len(items) == 12
    assert datalist["deidentified"] is True
    cases = list(Phantom(PhantomConfig(seed=3)).cases(12))
    by_level = sorted(c.majority for c in cases)
    assert sorted(i["tirads"] for i in items) == by_level
    for item in items:
        assert item["patient"].startswith("ANON-")
        assert item["case_id"].startswith(item["patient"])
        image, spacing = read_nifti_2d(out / item["image"])
        mask, _ = read_nifti_2d(out / item["label"])
        assert spacing == pytest.approx(item["spacing"])
        match = [c for c in cases if c.image.shape == image.shape
                 and np.abs(c.image.astype(int) - image.astype(int)).mean() < 2]  # fmt: skip
        assert match, item["case_id"]  # cropped back to exactly the tissue image
        np.testing.assert_array_equal(mask, match[0].consensus.astype(np.uint8))
    text = (out / "manifest.json").read_text() + (out / "datalist.json").read_text()
    for case in cases:
        assert case.frame.text.patient_id not in text  # no MRN, not even in source paths
    assert main(["audit", str(out)]) == 0
    assert "audit passed" in capsys.readouterr().out
    assert_no_phi(out, export)
    # Resume: nothing is converted again.
    assert _prep(export, out, "--labels", str(export / "labels.csv")) == 0
    assert "0 new and 12 reused" in capsys.readouterr().out


def test_audit_fails_on_an_export_that_was_not_deidentified(export, capsys):
    assert main(["audit", str(export)]) == 1
    assert "PatientName" in capsys.readouterr().out


def test_audit_against_the_source_finds_its_identifiers_in_any_file(export, tmp_path, capsys):
    identifiers = source_identifiers(export)
    case = next(Phantom(PhantomConfig(seed=3)).cases(1))
    name, patient_id = case.frame.text.patient_name, case.frame.text.patient_id
    expected = {name, name.replace("^", " "), patient_id, "PHANTOM GENERAL HOSPITAL"}
    assert expected <= set(identifiers)
    out = tmp_path / "run"
    (out / "eval").mkdir(parents=True)
    params = out / "eval" / "params.json"
    params.write_text(json.dumps({"patient": "ANON-0123456789ab"}))
    assert main(["audit", str(out), "--against", str(export)]) == 0
    params.write_text(json.dumps({"note": name.replace("^", " ").lower()}))  # case-blind
    assert main(["audit", str(out), "--against", str(export)]) == 1
    params.unlink()
    with gzip.open(out / "eval" / "log.txt.gz", "wt") as handle:  # compressed files are searched
        handle.write(f"case of {patient_id}")
    assert main(["audit", str(out), "--against", str(export)]) == 1
    printed = capsys.readouterr().out
    assert "eval/log.txt.gz: holds identifier" in printed
    assert patient_id not in printed  # the finding never repeats the identifier
    with pytest.raises(ValueError, match="shorter than"):
        audit_folder(out, ["MRN1"])


def test_png_masks_multiframe_rejects_and_exit_code(tmp_path, capsys):
    source, masks = tmp_path / "in", tmp_path / "masks"
    frames = np.stack([np.full((40, 50), 60 + 20 * i, np.uint8) for i in range(3)])
    for name, mrn in (("a", "MRN1"), ("b", "MRN2")):
        patient = PatientInfo.fake("DOE^JANE", mrn, "20240101", "120000")
        frames[:, 30, 40] = ord(name)  # distinct images (identical ones would be grouped)
        write_ultrasound_dicom(source / name / "cine.dcm", frames, regions=[(5, 6, 44, 35)],
                               spacing_mm=(0.1, 0.2), patient=patient,
                               photometric="RGB")  # fmt: skip
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 10:30] = 255
    (masks / "a").mkdir(parents=True)
    Image.fromarray(mask).save(masks / "a" / "cine_f2.png")
    (source / "notes.txt").write_text("not an image")
    ct = pydicom.dcmread(source / "a" / "cine.dcm")
    ct.SOPClassUID = pydicom.uid.CTImageStorage
    ct.save_as(source / "ct.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    assert _prep(source, out, "--masks", str(masks), "--no-deid", "--test-fraction", "0",
                 "--folds", "2", "--frames", "all") == 0  # fmt: skip
    items = {i["case_id"]: i for i in json.loads((out / "datalist.json").read_text())["training"]}
    assert sorted(items) == [f"{p}-cine_f{n:03d}" for p in "ab" for n in (1, 2, 3)]
    assert items["a-cine_f002"]["frame"] == 2
    assert "label" in items["a-cine_f002"]
    assert "label" not in items["a-cine_f001"]  # only frame 2 has a mask
    label, spacing = read_nifti_2d(out / items["a-cine_f002"]["label"])
    np.testing.assert_array_equal(label, (mask[6:36, 5:45] > 0).astype(np.uint8))
    assert spacing == pytest.approx((0.1, 0.2))
    image, _ = read_nifti_2d(out / items["a-cine_f003"]["image"])
    assert image.shape == (30, 40)
    assert int(image[0, 0]) == 100
    rejected = (out / "rejected.csv").read_text()
    assert "notes.txt" in rejected
    assert "CT Image Storage" in rejected
    # One patient cannot fill two folds: a clear error, exit code 2.
    assert _prep(source / "a", tmp_path / "one", "--no-deid", "--test-fraction", "0",
                 "--folds", "2") == 2  # fmt: skip
    assert "cannot fill 2 folds" in capsys.readouterr().err


def test_nothing_converted_exits_non_zero(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.dcm").write_bytes(b"\x00" * 300)
    assert _prep(tmp_path / "in", tmp_path / "out") == 1
    assert "junk.dcm" in (tmp_path / "out" / "rejected.csv").read_text()


def test_salt_is_required_for_deidentification(tmp_path, monkeypatch):
    monkeypatch.delenv("THYROID_MONAI_DEID_SALT", raising=False)
    (tmp_path / "in").mkdir()
    with pytest.raises(SystemExit, match="salt"):
        main(["prep", "dicom", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out")])


def test_radiomics_targets_are_standardised_on_training_items_and_cached(
    export, tmp_path, capsys, assert_no_phi
):
    out = tmp_path / "data"
    assert _prep(export, out, "--labels", str(export / "labels.csv")) == 0
    datalist_path = out / "datalist.json"
    assert main(["prep", "targets", "--datalist", str(datalist_path), "--workers", "2",
                 "--no-progress"]) == 0  # fmt: skip
    assert "12 computed, 0 from the cache" in capsys.readouterr().out
    datalist = json.loads(datalist_path.read_text())
    assert datalist["radiomics"]["features"] == list(FEATURES)
    stats = json.loads((out / datalist["radiomics"]["stats"]).read_text())
    training = [i["radiomics"] for i in datalist["training"]]
    assert stats["items"] == len(training)
    values = np.array(training, dtype=float)
    np.testing.assert_allclose(np.nanmean(values, axis=0), 0.0, atol=1e-9)
    assert all(len(i["radiomics"]) == len(FEATURES) for i in datalist["testing"])
    assert main(["prep", "targets", "--datalist", str(datalist_path), "--no-progress"]) == 0
    assert "0 computed, 12 from the cache" in capsys.readouterr().out
    assert_no_phi(out, export)  # the targets and their cache too
