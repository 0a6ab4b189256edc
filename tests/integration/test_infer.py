"""``thyroid-monai infer`` and the bundle's inference.yaml on DICOM, NIfTI and PNG inputs.

One model is trained for a short epoch through the bundle (64x64 phantom images); it then infers
on a de-identified ultrasound DICOM export (DICOM SEG referencing the de-identified source, PHI
audit of the whole output folder), on NIfTI and PNG files (with a corrupt file among them), and
through ``inference.yaml``. Measurements computed on the phantom's truth mask through the report
code match the phantom's known nodule size.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureTyped
from PIL import Image

from data_prep.audit import audit_folder
from data_prep.phantom import write_phantom_dataset
from data_prep.phantom_dicom import export_phantom_dicom
from thyroid_monai import keys
from thyroid_monai.cli import main
from thyroid_monai.inference import (
    InferenceSettings,
    Prediction,
    build_report,
    inference_preprocessing,
    load_model,
    read_input,
)
from thyroid_monai.io.checkpoints import RUN_CONFIG
from thyroid_monai.io.nifti import read_nifti_2d
from thyroid_monai.synthetic import Phantom, PhantomConfig, RenderSettings
from thyroid_monai.tirads import acr_recommendation
from thyroid_monai.tracking import register_model
from thyroid_monai.transforms import MissingTargetsd
from thyroid_monai.workflows import (
    default_bundle_dir,
    run_bundle,
    sqlite_uri,
    tracking_store,
)

IMAGE_SIZE = [64, 64]
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
EXPORT_CONFIG = PhantomConfig(seed=5, render=RenderSettings(height=96, width=128))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, dataset folder): 8 phantom images, one short tracked epoch."""
    root = tmp_path_factory.mktemp("infer")
    data, run = root / "data", root / "run"
    config = PhantomConfig(seed=3, render=RenderSettings(height=64, width=64))
    write_phantom_dataset(data, 8, config, folds=2, test_fraction=0.25, progress=False)
    overrides = {"max_epochs": 1, "image_size": IMAGE_SIZE, "batch_size": 4,
                 "log_iterations": False}  # fmt: skip
    run_bundle(["train.yaml"], run_dir=run, dataset_dir=data, quiet=True, overrides=overrides)
    return run, data


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom images exported as ultrasound DICOM with fake identities (+ their SEGs)."""
    return export_phantom_dicom(tmp_path_factory.mktemp("export"), 2, EXPORT_CONFIG)


def read_all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_dicom_input_gives_a_seg_on_the_deidentified_source(
    trained: tuple[Path, Path], export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = trained
    out = Path("out")
    assert main(["infer", "--model", str(run), "--in", str(export), "--out", str(out),
                 "--salt", "test-salt"]) == 0  # fmt: skip
    assert "2 images written" in capsys.readouterr().out
    reports = sorted(out.glob("*/report.json"))
    assert len(reports) == 2
    for path in reports:
        report = json.loads(path.read_text())
        assert report["schema_version"] == 1
        assert report["input"]["file"] is None
        assert report["input"]["deidentified"]
        source = pydicom.dcmread(path.parent / report["outputs"]["source_dicom"])
        seg = pydicom.dcmread(path.parent / report["outputs"]["segmentation"])
        assert seg.SOPClassUID == SEGMENTATION_STORAGE
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.PatientID == source.PatientID
        assert seg.pixel_array.shape == (source.Rows, source.Columns)
        # The SEG frame is the mask NIfTI placed back into the full frame.
        mask, spacing = read_nifti_2d(path.parent / "mask.nii.gz")
        assert spacing == pytest.approx(report["input"]["spacing_mm"])
        assert int(seg.pixel_array.sum()) == int(mask.sum())
    audit = audit_folder(out)
    assert audit.passed, audit.problems
    assert audit.dicom_files == 4
    everything = read_all_bytes(out)
    for case in Phantom(EXPORT_CONFIG).cases(2):
        text = case.frame.text
        for value in (text.patient_id, text.patient_name, text.patient_name.replace("^", " ")):
            assert value.encode() not in everything


def test_truth_mask_measurements_match_the_phantom_size(
    trained: tuple[Path, Path], export: Path
) -> None:
    run, _ = trained
    model = load_model(run)
    files = sorted(p for p in export.rglob("view*.dcm") if not p.name.endswith("_seg.dcm"))
    cases = {
        f"{c.frame.text.patient_id}/view{c.view}.dcm": c for c in Phantom(EXPORT_CONFIG).cases(2)
    }
    for path in files:
        case = cases[path.relative_to(export).as_posix()]
        image = read_input(path)
        assert image.image.shape == case.mask.shape  # the crop is the tissue region
        prediction = model.predict(image.image)
        truth = Prediction(case.mask.astype(float), prediction.level_probabilities)
        report, _ = build_report(
            image, case.mask, truth, model.describe(), model.grouping, name="truth",
            relative_input=None, deidentified=True, settings=InferenceSettings(),
        )  # fmt: skip
        known = case.nodule_size_mm()
        size = report["measurements"]
        assert abs(size["transverse_mm"] - known["transverse"]) <= 1.0
        assert abs(size["ap_mm"] - known["ap"]) <= 1.0
        assert size["taller_than_wide"] == pytest.approx(
            known["ap"] / known["transverse"], rel=0.05
        )
        level = report["tirads"]["level"]
        expected = acr_recommendation(level, size["max_diameter_mm"]).value
        assert report["recommendation"]["action"] == expected
        assert f"{size['transverse_mm']:.1f} mm transverse" in report["findings"]


def test_nifti_png_and_a_corrupt_file(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = trained
    inputs = Path("inputs")
    inputs.mkdir()
    images = sorted((data / "images").glob("*.nii.gz"))[:2]
    for path in images:
        (inputs / path.name).write_bytes(path.read_bytes())
    pixels, _ = read_nifti_2d(images[0])
    Image.fromarray(pixels.astype(np.uint8)).save(inputs / "picture.png")
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["infer", "--model", str(run), "--in", str(inputs), "--out", "out"])
    captured = capsys.readouterr()
    assert code == 1
    assert "corrupt.png" in captured.err
    assert "3 images written" in captured.out
    png = json.loads(Path("out/picture/report.json").read_text())
    assert png["input"]["spacing_mm"] is None
    assert any("spacing is unknown" in warning for warning in png["warnings"])
    assert png["recommendation"]["action"] in ("none", "size_unknown")
    if png["measurements"] is not None:
        assert png["measurements"]["max_diameter_mm"] is None
    nifti = json.loads(Path(f"out/{images[0].name[:-7]}/report.json").read_text())
    assert nifti["input"]["spacing_mm"] is not None
    assert sum(nifti["tirads"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    # The PNG holds the NIfTI's pixels: same model outputs.
    assert png["tirads"]["probabilities"] == nifti["tirads"]["probabilities"]
    summary = json.loads(Path("out/summary.json").read_text())
    assert summary["failed"] == 1
    assert len(summary["written"]) == 3
    assert Path("out/picture/overlay.png").is_file()
    assert not list(Path("out").rglob("*.tmp*"))


def test_untrusted_models_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(torch.nn.Linear(2, 2), "pickled.pt")
    Path("in.png").write_bytes(b"")
    assert main(["infer", "--model", "pickled.pt", "--in", "in.png", "--out", "out"]) == 2
    error = capsys.readouterr().err
    assert "pickled.pt" in error
    assert "--trust-model" in error
    assert main(["infer", "--model", "models:/thyroid@champion", "--in", "in.png",
                 "--out", "out"]) == 2  # fmt: skip
    assert "--trust-model" in capsys.readouterr().err
    assert not Path("out").exists()


def test_bundle_inference_writes_what_the_cli_writes(trained: tuple[Path, Path]) -> None:
    run, data = trained
    inputs = Path("inputs")
    inputs.mkdir()
    image = sorted((data / "images").glob("*.nii.gz"))[0]
    (inputs / image.name).write_bytes(image.read_bytes())
    assert main(["infer", "--model", str(run), "--in", str(inputs), "--out", "cli"]) == 0
    run_bundle(
        ["train.yaml", "inference.yaml"], run_dir=run, dataset_dir=data, tracking=False,
        quiet=True, overrides={"image_size": IMAGE_SIZE, "input_dir": str(inputs.resolve())},
    )  # fmt: skip
    name = image.name[:-7]
    bundle = json.loads((run / "inference" / name / "report.json").read_text())
    cli = json.loads(Path(f"cli/{name}/report.json").read_text())
    assert bundle == cli
    bundle_mask, _ = read_nifti_2d(run / "inference" / name / "mask.nii.gz")
    np.testing.assert_array_equal(bundle_mask, read_nifti_2d(f"cli/{name}/mask.nii.gz")[0])


def test_preprocessing_is_the_bundles(trained: tuple[Path, Path]) -> None:
    _, data = trained
    parser = ConfigParser()
    parser.read_config(str(default_bundle_dir() / "configs" / "train.yaml"))
    parser.update({"dataset_dir": str(data), "image_size": IMAGE_SIZE})
    # The image part of the validation pre-processing (the label steps need a label).
    steps = parser.get_parsed_content("validate#preprocessing").transforms
    label_steps = (EnsureTyped, MissingTargetsd)
    preprocessing = Compose([step for step in steps if not isinstance(step, label_steps)])
    item = json.loads((data / "datalist.json").read_text())["training"][0]
    sample = preprocessing({keys.IMAGE: str(data / item[keys.IMAGE])})
    pixels, _ = read_nifti_2d(data / item[keys.IMAGE])
    ours = inference_preprocessing(IMAGE_SIZE)(torch.as_tensor(pixels.T, dtype=torch.float32)[None])
    np.testing.assert_allclose(np.asarray(ours), np.asarray(sample[keys.IMAGE]), atol=1e-6)


@pytest.mark.slow  # registering a pickled model costs several seconds
def test_a_registered_mlflow_model_infers_like_its_checkpoint(trained: tuple[Path, Path]) -> None:
    run, data = trained
    store = sqlite_uri(tracking_store(run))
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("thyroid_us_multitask")
    assert experiment is not None
    run_id = client.search_runs([experiment.experiment_id])[0].info.run_id
    network = load_model(run).network
    register_model(
        network, run_id=run_id, registered_name="thyroid", tracking_uri=store,
        config_file=run / RUN_CONFIG, input_example=np.zeros((1, *IMAGE_SIZE), dtype=np.float32),
        key_metric="val_mean_dice",
    )  # fmt: skip
    image = sorted((data / "images").glob("*.nii.gz"))[0]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        uri = "models:/thyroid@champion"
        assert main(["infer", "--model", uri, "--trust-model", "--in", str(image),
                     "--out", "registered"]) == 0  # fmt: skip
    finally:
        mlflow.set_tracking_uri(previous)
    assert main(["infer", "--model", str(run), "--in", str(image), "--out", "checkpoint"]) == 0
    name = image.name[:-7]
    registered = json.loads(Path(f"registered/{name}/report.json").read_text())
    checkpoint = json.loads(Path(f"checkpoint/{name}/report.json").read_text())
    assert registered["model"]["kind"] == "mlflow"
    assert registered["model"]["label_grouping"] == "acr5"
    assert registered["tirads"] == checkpoint["tirads"]
    assert registered["measurements"] == checkpoint["measurements"]


def test_keep_identifiers_references_the_original_file(
    trained: tuple[Path, Path], export: Path
) -> None:
    run, _ = trained
    original = sorted(export.rglob("view*.dcm"))[0]
    assert not original.name.endswith("_seg.dcm")
    # A training checkpoint of the run loads like the run folder (its config is found).
    checkpoint = next((run / "models").glob("checkpoint_epoch=*.pt"))
    assert main(["infer", "--model", str(checkpoint), "--in", str(original), "--out", "out",
                 "--keep-identifiers"]) == 0  # fmt: skip
    report = json.loads(Path(f"out/{original.stem}/report.json").read_text())
    assert report["input"]["file"] == original.name
    assert report["input"]["deidentified"] is False
    assert report["outputs"]["source_dicom"] is None
    seg = pydicom.dcmread(Path("out") / original.stem / report["outputs"]["segmentation"])
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    source = pydicom.dcmread(original)
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.PatientID == source.PatientID
