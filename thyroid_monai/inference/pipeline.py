"""Inference over files: read, predict, measure, describe, recommend, write; one folder per image.

Output layout::

    <out>/summary.json                 counts and the case folders written (no input paths of
                                       de-identified DICOM)
    <out>/<case>/report.json           see thyroid_monai.inference.report
    <out>/<case>/mask.nii.gz           the nodule mask with the input's spacing
    <out>/<case>/overlay.png           image, mask contour, level and size
    <out>/<case>/segmentation.dcm      DICOM SEG (DICOM inputs)
    <out>/<case>/source.dcm            the de-identified source the SEG references

A case is named after its input path (relative to the input folder, suffix dropped) except for
de-identified DICOM, whose paths often name patients: there it is ``dicom-`` and 16 hex digits of
a salted hash of the SOP Instance UID. A file that fails is reported with its path and the error
and the others still run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from thyroid_monai.inference.descriptors import (
    DescriptorAssessment,
    DescriptorThresholds,
    descriptors_from_heads,
    estimate_descriptors,
)
from thyroid_monai.inference.inputs import (
    InputImage,
    NotAnImageError,
    discover_inputs,
    read_input,
)
from thyroid_monai.inference.measurements import largest_component, measure_nodule
from thyroid_monai.inference.model import InferenceModel, Prediction
from thyroid_monai.inference.outputs import (
    dicom_outputs,
    segmentation_unsupported,
    write_dicom,
    write_mask,
    write_overlay,
)
from thyroid_monai.inference.report import (
    SCHEMA_VERSION,
    findings_text,
    level_section,
    recommendation_section,
)
from thyroid_monai.io.deid import (
    DeidentificationOptions,
    blank_outside_image_regions,
    deidentify,
    is_dicom_file,
)
from thyroid_monai.io.dicom import FramePolicy
from thyroid_monai.io.errors import safe_reason
from thyroid_monai.io.files import atomic_folder, write_json_atomic
from thyroid_monai.tirads import LabelGrouping

SALT_VARIABLE = "THYROID_MONAI_DEID_SALT"
"""Environment variable holding the de-identification salt (the same one ``prep dicom`` reads)."""


def deidentification_options(
    keep_identifiers: bool = False, salt: str | None = None
) -> DeidentificationOptions | None:
    """De-identification of DICOM inputs: on unless ``keep_identifiers``.

    Args:
        keep_identifiers: Keep the inputs' identities in the outputs (returns ``None``).
        salt: The salt; default ``$THYROID_MONAI_DEID_SALT``, else a random one for this run
            (pseudonyms and UIDs then differ between runs and cannot be linked).

    Returns:
        The options, or ``None`` when identifiers are kept.
    """
    if keep_identifiers:
        return None
    chosen = salt or os.environ.get(SALT_VARIABLE) or secrets.token_hex(16)
    return DeidentificationOptions(salt=chosen)


@dataclass(frozen=True)
class InferenceSettings:
    """Options of :func:`run_inference` (the CLI and ``inference.yaml`` expose them).

    Attributes:
        threshold: Nodule probability from which a pixel is inside the mask.
        keep_largest: Keep only the largest connected component (one nodule per image, as the
            report describes one nodule).
        frames: Frame of a multi-frame DICOM to use.
        write_segmentation: Write a DICOM SEG for DICOM inputs.
        foci_threshold: Sigmoid probability of the foci head from which a focus type counts.
        descriptor_thresholds: Rules of the image-feature descriptor estimates.
    """

    threshold: float = 0.5
    keep_largest: bool = True
    frames: FramePolicy = "middle"
    write_segmentation: bool = True
    foci_threshold: float = 0.5
    descriptor_thresholds: DescriptorThresholds = field(default_factory=DescriptorThresholds)

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


@dataclass
class InferenceSummary:
    """What one run did: the cases written, the files that failed and those skipped."""

    written: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    rejected: list[tuple[Path, str, str]] = field(default_factory=list)
    """``(path, stage, reason)`` of every failed file."""
    files: list[dict[str, Any]] = field(default_factory=list)
    """Every file's outcome in ``summary.json``: input (``None`` when hidden), case, outcome
    (written, failed, skipped), stage and reason."""

    @property
    def ok(self) -> bool:
        """Nothing failed and something was written."""
        return not self.failed and bool(self.written)


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thyroid-monai")
    except PackageNotFoundError:
        return "unknown"


def case_name(image: InputImage, root: Path, deid: DeidentificationOptions | None) -> str:
    """The output folder name of an image (see the module docstring)."""
    if image.kind == "dicom" and deid is not None and image.dicom is not None:
        digest = hashlib.sha256(f"{deid.salt}\x00case\x00{image.dicom.sop_instance_uid}".encode())
        return f"dicom-{digest.hexdigest()[:16]}"
    relative = image.path.relative_to(root) if image.path.is_relative_to(root) else image.path
    stem = relative.as_posix()
    for suffix in (".nii.gz", ".nii", ".png", ".jpeg", ".jpg", ".dicom", ".dcm"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")) or "image"


def _descriptors(
    model_outputs: dict[str, np.ndarray],
    image: InputImage,
    mask: np.ndarray,
    settings: InferenceSettings,
) -> DescriptorAssessment | None:
    if model_outputs:
        return descriptors_from_heads(model_outputs, foci_threshold=settings.foci_threshold)
    if not mask.any():
        return None
    return estimate_descriptors(
        image.image, mask, image.spacing_mm, thresholds=settings.descriptor_thresholds
    )


def _no_level_reason(tirads: Mapping[str, Any], grouping: LabelGrouping | None) -> str:
    if tirads["source"] == "level_head" and grouping is not None:
        return f"class {tirads['class']} of the {grouping.name} grouping is not an ACR level"
    if tirads["source"] is None:
        return "the model has no level head and no nodule was segmented to score"
    return "not every ACR category could be assessed, so the points give no level"


def _caption(report: dict[str, Any]) -> str:
    level = report["tirads"]["class"] or report["tirads"]["level"] or "level n/a"
    if not report["nodule"]["detected"]:
        return f"{level}  no nodule segmented"
    size = report["measurements"]
    if size and size["max_diameter_mm"] is not None:
        return (
            f"{level}  max {size['max_diameter_mm']:.1f} mm  {report['recommendation']['action']}"
        )
    return f"{level}  size unknown"


def build_report(
    image: InputImage,
    mask: np.ndarray,
    prediction: Prediction,
    model: Mapping[str, Any],
    grouping: LabelGrouping | None,
    *,
    name: str,
    relative_input: str | None,
    deidentified: bool,
    settings: InferenceSettings,
) -> tuple[dict[str, Any], np.ndarray]:
    """The report of one image from its mask and the model's outputs (no files written).

    Args:
        image: The input read.
        mask: The thresholded ``(rows, columns)`` mask, before keeping the largest component.
        prediction: The model's level and descriptor outputs.
        model: The model's description (:meth:`InferenceModel.describe`).
        grouping: Label grouping of the level probabilities.
        name: Case name.
        relative_input: Input path to record (``None`` to record none).
        deidentified: Whether the input was de-identified.
        settings: Thresholds and options.

    Returns:
        The report without its ``outputs`` section (see :mod:`thyroid_monai.inference.report`)
        and the mask it describes (the largest component with ``settings.keep_largest``).
    """
    warnings = []
    largest, components = largest_component(mask)
    if settings.keep_largest and components > 1:
        mask = largest
        warnings.append(f"{components} separate regions found; the largest is reported")
    if prediction.nodule_probability is None:
        warnings.append("the model has no mask output: no nodule measurements")
    if image.spacing_mm is None:
        warnings.append("the pixel spacing is unknown: no sizes in mm, no size-based advice")
    measurements = measure_nodule(mask, image.spacing_mm)
    descriptors = _descriptors(prediction.descriptor_logits, image, mask, settings)
    tirads = level_section(
        prediction.level_probabilities, grouping, descriptors, str(model.get("level_from"))
    )
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "case": name,
        "input": {
            "kind": image.kind,
            "file": relative_input,
            "deidentified": deidentified,
            "shape": list(image.image.shape),
            "frame": image.frame_number,
            "spacing_mm": list(image.spacing_mm) if image.spacing_mm else None,
            "spacing_source": image.spacing_source,
        },
        "model": dict(model),
        "nodule": {
            "detected": bool(np.any(mask)),
            "components": components,
            "threshold": settings.threshold,
        },
        "measurements": measurements.to_dict() if measurements else None,
        "tirads": tirads,
        "descriptors": descriptors.to_dict() if descriptors else None,
        "recommendation": recommendation_section(
            tirads["level"], measurements, no_level_reason=_no_level_reason(tirads, grouping)
        ),
    }
    report["findings"] = findings_text(report)
    report["warnings"] = warnings
    return report, mask


def predict_report(
    model: InferenceModel,
    image: InputImage,
    *,
    name: str,
    relative_input: str | None,
    deidentified: bool,
    settings: InferenceSettings,
) -> tuple[dict[str, Any], np.ndarray, Prediction]:
    """Runs the model on one image and builds its report (no files written).

    The one path from pixels to a report: :func:`infer_image` (files) and the served MLflow model
    (:mod:`thyroid_monai.tracking.served_model`, HTTP) both use it.

    Returns:
        The report (without its ``outputs`` section), the mask it describes and the prediction.
    """
    prediction = model.predict(image.image)
    if prediction.nodule_probability is None:
        thresholded = np.zeros(image.image.shape, dtype=bool)
    else:
        thresholded = prediction.nodule_probability >= settings.threshold
    report, mask = build_report(
        image, thresholded, prediction, model.describe(), model.grouping, name=name,
        relative_input=relative_input, deidentified=deidentified, settings=settings,
    )  # fmt: skip
    return report, mask, prediction


class CaseFailure(Exception):
    """One input that could not be processed: the stage that failed and a value-free reason."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@contextlib.contextmanager
def _stage(name: str, path: Path | None = None) -> Iterator[None]:
    """Turns any failure inside into a :class:`CaseFailure` of stage ``name``.

    Messages of the project's own errors are kept (minus the file name, which the caller adds);
    foreign ones are reduced by :func:`thyroid_monai.io.errors.safe_reason`.
    """
    try:
        yield
    except CaseFailure:
        raise
    except Exception as error:  # one file's failure, whatever its type, must not end the run
        reason = safe_reason(error)
        if path is not None:
            reason = reason.removeprefix(f"{path}: ")
        raise CaseFailure(name, reason) from None


def infer_image(
    model: InferenceModel,
    image: InputImage,
    out_dir: Path,
    *,
    name: str,
    relative_input: str | None,
    deid: DeidentificationOptions | None,
    settings: InferenceSettings,
) -> dict[str, Any]:
    """Runs the model on one image and writes its outputs into ``out_dir / name``.

    Order: de-identify (DICOM inputs), predict, build every output in memory, then write the case
    folder at once (:func:`thyroid_monai.io.files.atomic_folder`). No picture of a DICOM source
    exists before it is de-identified, and a failure at any stage leaves no case folder.

    Returns:
        The report written.

    Raises:
        CaseFailure: Naming the stage that failed and why.
    """
    dicom = image.dicom
    source = dicom.dataset if dicom is not None else None
    clean_source = None
    if source is not None and dicom is not None and deid is not None:
        with _stage("deidentify", image.path):
            clean_source = deidentify(source, deid)
            pixels = blank_outside_image_regions(image.image, source, dicom.crop)
            image = dataclasses.replace(image, image=pixels)
    with _stage("predict", image.path):
        report, mask, _ = predict_report(
            model, image, name=name, relative_input=relative_input,
            deidentified=clean_source is not None, settings=settings,
        )  # fmt: skip
    outputs: dict[str, str | None] = {
        "mask": "mask.nii.gz", "overlay": "overlay.png", "report": "report.json",
        "segmentation": None, "source_dicom": None,
    }  # fmt: skip
    dicom_files: dict[str, Dataset] = {}
    if settings.write_segmentation and source is not None and dicom is not None:
        with _stage("segmentation", image.path):
            reason = segmentation_unsupported(source)
        if reason is not None:
            report["warnings"].append(reason)
        else:
            with _stage("segmentation", image.path):
                segmentation, copy = dicom_outputs(
                    source, mask, dicom.crop, deid=deid, software_version=_software_version(),
                    deidentified_source=clean_source,
                )  # fmt: skip
            dicom_files["segmentation.dcm"] = segmentation
            outputs["segmentation"] = "segmentation.dcm"
            if copy is not None:
                dicom_files["source.dcm"] = copy
                outputs["source_dicom"] = "source.dcm"
    report["outputs"] = outputs

    def write(folder: Path) -> None:
        write_mask(folder / "mask.nii.gz", mask, image.spacing_mm)
        write_overlay(folder / "overlay.png", image.image, mask, _caption(report))
        for file_name, dataset in dicom_files.items():
            write_dicom(folder / file_name, dataset)
        write_json_atomic(folder / "report.json", report)

    with _stage("write", image.path):
        atomic_folder(out_dir / name, write)
    return report


def run_inference(
    model: InferenceModel,
    source: str | Path,
    out_dir: str | Path,
    *,
    deid: DeidentificationOptions | None,
    settings: InferenceSettings | None = None,
    on_case: Callable[[Path, str | None, str | None], None] | None = None,
) -> InferenceSummary:
    """Infers on one file or every supported file under a folder.

    Every file is isolated: whatever goes wrong with one (an unreadable file, a failed
    de-identification, a model or writer error) is recorded with its stage and reason and the run
    goes on. ``summary.json`` (every file's outcome) is written at the end whatever happened,
    including an interruption.

    Args:
        model: The loaded model.
        source: A file or a folder.
        out_dir: Output folder (created; one sub-folder per image, ``summary.json``).
        deid: De-identification of DICOM inputs, or ``None`` to keep identifiers.
        settings: Thresholds and output options.
        on_case: Called after each file with ``(path, case name or None, error or None)``.

    Returns:
        The summary (also written to ``summary.json``).
    """
    settings = settings or InferenceSettings()
    source, out = Path(source), Path(out_dir)
    root = source if source.is_dir() else source.parent
    files: Sequence[Path] = discover_inputs(source, exclude=[out])
    summary = InferenceSummary()
    taken: set[str] = set()
    try:
        for path in files:
            name, error = _infer_file(model, path, root, out, deid, settings, summary, taken)
            if on_case is not None:
                on_case(path, name, error)
    finally:
        _write_summary(out, model, summary)
    return summary


def _hidden(path: Path, deid: DeidentificationOptions | None) -> bool:
    """Whether a path stays out of ``summary.json``: paths of DICOM files often name patients."""
    if deid is None:
        return False
    return path.name.lower().endswith((".dcm", ".dicom")) or is_dicom_file(path)


def _infer_file(
    model: InferenceModel,
    path: Path,
    root: Path,
    out: Path,
    deid: DeidentificationOptions | None,
    settings: InferenceSettings,
    summary: InferenceSummary,
    taken: set[str],
) -> tuple[str | None, str | None]:
    """One file, isolated: returns its case name and the printed error (``None`` if none)."""
    relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    shown = None if _hidden(path, deid) else relative
    index = len(summary.files)
    name = None
    try:
        try:
            image = read_input(path, frames=settings.frames)
        except NotAnImageError as skipped:
            summary.skipped.append((path, str(skipped)))
            summary.files.append({"index": index, "input": shown, "case": None,
                                  "outcome": "skipped", "stage": "read",
                                  "reason": _without(skipped, path)})  # fmt: skip
            return None, None
        except Exception as error:  # unreadable input of any kind
            raise CaseFailure("read", _without(error, path)) from None
        with _stage("read", path):
            name = case_name(image, root, deid)
        base, count = name, 1
        while name in taken:
            count += 1
            name = f"{base}-{count}"
        taken.add(name)
        with _stage("infer", path):  # anything the stages above do not cover
            report = infer_image(
                model, image, out, name=name, relative_input=shown, deid=deid, settings=settings
            )
    except CaseFailure as failure:
        printed = f"{path}: {failure.reason} (stage {failure.stage})"
        summary.failed.append((path, printed))
        summary.rejected.append((path, failure.stage, failure.reason))
        summary.files.append({"index": index, "input": shown, "case": None, "outcome": "failed",
                              "stage": failure.stage, "reason": failure.reason})  # fmt: skip
        return None, printed
    summary.written.append(
        {"case": name, "input": shown, "level": report["tirads"]["level"],
         "recommendation": report["recommendation"]["action"]}
    )  # fmt: skip
    summary.files.append({"index": index, "input": shown, "case": name, "outcome": "written",
                          "stage": None, "reason": None})  # fmt: skip
    return name, None


def _without(error: BaseException, path: Path) -> str:
    return safe_reason(error).removeprefix(f"{path}: ")


def _write_summary(out: Path, model: InferenceModel, summary: InferenceSummary) -> None:
    """Writes ``summary.json``: counts, the cases written and every file's outcome.

    No DICOM path is written when de-identifying (exports are often filed by patient ID): such an
    input is listed by its ``index`` in the sorted input list, and the terminal output names it.
    """
    write_json_atomic(
        out / "summary.json",
        {
            "schema_version": SCHEMA_VERSION,
            "model": model.describe(),
            "written": summary.written,
            "failed": len(summary.failed),
            "skipped": len(summary.skipped),
            "files": summary.files,
        },
    )
