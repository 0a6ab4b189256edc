"""Writing the per-image outputs, each file atomically: mask NIfTI, overlay PNG, DICOM SEG.

DICOM inputs also get a DICOM SEG of the mask (highdicom, binary, one segment "nodule", algorithm
type AUTOMATIC), placed back into the full frame it was cropped from. With de-identification on
(the default) the SEG references the **de-identified** source: the SEG is built from the original
header and then de-identified with the same salt as the source copy written beside it, so every
UID it references is remapped exactly as the source's own UIDs were (``remap_uid`` is a function
of salt and UID). The pair ``source.dcm`` + ``segmentation.dcm`` then opens together in a DICOM
viewer and passes the PHI audit; nothing of the original identity reaches the output. With
``--keep-identifiers`` the SEG references the original file and no source copy is written. A cine
(multi-frame) source gets no SEG, with a warning in the report: highdicom writes SEGs of images
without plane positions for single frames only.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM
from scipy import ndimage

from thyroid_monai.io.deid import DeidentificationOptions, deidentify
from thyroid_monai.io.dicom import (
    US_IMAGE_STORAGE,
    US_IMAGE_STORAGE_RETIRED,
    US_MULTIFRAME_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE_RETIRED,
    frame_count,
    is_valid_uid,
)
from thyroid_monai.io.files import atomic_path
from thyroid_monai.io.nifti import write_nifti_2d

CONTOUR_COLOUR = (255, 40, 40)
TEXT_BAND_COLOUR = (0, 0, 0)
TEXT_COLOUR = (255, 255, 255)


def write_mask(path: Path, mask: np.ndarray, spacing_mm: tuple[float, float] | None) -> Path:
    """The ``(rows, columns)`` mask as a ``uint8`` NIfTI with the input's spacing."""
    return write_nifti_2d(path, (np.asarray(mask) > 0).astype(np.uint8), spacing_mm)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8)


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray, caption: str) -> Path:
    """A PNG of the image with the mask's contour and a caption band above it.

    Args:
        path: Destination ``.png``.
        image: ``(rows, columns)`` gray levels (clipped to 0-255).
        mask: ``(rows, columns)`` nodule mask.
        caption: One line (the level, the size).
    """
    from PIL import Image, ImageDraw, ImageFont

    gray = _to_uint8(image)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    inside = np.asarray(mask) > 0
    contour = inside & ~ndimage.binary_erosion(inside, structure=np.ones((3, 3), dtype=bool))
    rgb[contour] = CONTOUR_COLOUR
    font = ImageFont.load_default()
    band = 16
    canvas = Image.new("RGB", (gray.shape[1], gray.shape[0] + band), TEXT_BAND_COLOUR)
    canvas.paste(Image.fromarray(rgb), (0, band))
    ImageDraw.Draw(canvas).text((2, 2), caption, fill=TEXT_COLOUR, font=font)
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
    return path


def segmentation_unsupported(source: Dataset) -> str | None:
    """Why no DICOM SEG can be written for ``source`` (``None`` when one can).

    highdicom writes a SEG of an image without plane positions (ultrasound) only for a single
    frame: a cine's mask cannot say which frame it belongs to. A SEG references its source's
    study, series and instance, so those UIDs must be valid.
    """
    frames = frame_count(source)
    if frames > 1:
        return f"no DICOM SEG: the source is a {frames}-frame cine (single-frame sources only)"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        try:
            valid = is_valid_uid(source.get(keyword))
        except Exception:  # an unknown VR or a damaged value: not a UID to reference
            valid = False
        if not valid:
            return f"no DICOM SEG: the source has no valid {keyword} for the SEG to reference"
    return None


def _frame_mask(source: Dataset, mask: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    """The cropped mask placed back into the full frame of the source."""
    full = np.zeros((int(source.Rows), int(source.Columns)), dtype=bool)
    min_x, min_y, max_x, max_y = crop
    full[min_y : max_y + 1, min_x : max_x + 1] = np.asarray(mask) > 0
    return full


def build_segmentation(
    source: Dataset,
    mask: np.ndarray,
    crop: tuple[int, int, int, int],
    *,
    software_version: str,
) -> Dataset:
    """A binary DICOM SEG of ``mask`` (cropped coordinates) on a single-frame ``source``.

    Raises:
        ImportError: If highdicom (the ``dicom`` extra) is missing.
        ValueError: For a multi-frame source (see :func:`segmentation_unsupported`).
    """
    if (reason := segmentation_unsupported(source)) is not None:
        raise ValueError(reason)
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise ImportError(
            "DICOM SEG output needs highdicom; install the 'dicom' extra: "
            "pip install 'thyroid-monai[dicom]'"
        ) from None
    pixels = _frame_mask(source, mask, crop)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="thyroid_monai", family=codes.cid7162.ArtificialIntelligence, version=software_version
    )
    return nodule_segmentation(
        source,
        pixels,
        algorithm=algorithm,
        series_number=900,
        model_name="thyroid_monai multitask",
        software_version=software_version,
    )


def nodule_segmentation(
    source: Dataset,
    pixels: np.ndarray,
    *,
    algorithm: Any = None,
    series_number: int,
    model_name: str,
    software_version: str,
) -> Dataset:
    """A binary DICOM SEG with the one nodule segment, on the frame of a single-frame ``source``.

    Args:
        source: The image the mask belongs to.
        pixels: Boolean mask of the source's frame size.
        algorithm: A highdicom ``AlgorithmIdentificationSequence`` (automatic segmentation);
            ``None`` for a manual one (readers' contours).
        series_number: Series number of the SEG.
        model_name: Manufacturer's model name recorded in the SEG.
        software_version: Software version recorded in the SEG.
    """
    import highdicom as hd

    prepared, retired = _seg_source(source)
    segmentation = hd.seg.Segmentation(
        source_images=[prepared],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[nodule_segment_description(algorithm)],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="thyroid_monai",
        manufacturer_model_name=model_name,
        software_versions=software_version,
        device_serial_number="0",
        omit_empty_frames=False,  # an empty mask is a result too
    )
    if retired is not None:
        _restore_sop_class(segmentation, prepared.SOPClassUID, retired)
    return segmentation


SEG_TYPE2_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName",
)  # fmt: skip
"""Type 2 attributes highdicom copies from the source (present, possibly empty, in a valid file;
often absent in exports anonymised elsewhere)."""

RETIRED_TO_CURRENT = {US_IMAGE_STORAGE_RETIRED: US_IMAGE_STORAGE}
"""The retired single-frame ultrasound class and the current class with the same modules."""


def _seg_source(source: Dataset) -> tuple[Dataset, str | None]:
    """A copy of ``source`` that highdicom accepts, and the class it replaced (if any).

    highdicom looks the source's SOP class up in its IOD table (which lacks the retired
    ultrasound classes), reads the type 2 patient and study attributes as Python attributes (an
    absent one raises) and parses dates and times (a damaged one raises), and takes a multi-frame
    class for an enhanced image with functional groups. The copy therefore carries the current
    single-frame class (only single frames get a SEG), the class from the file meta when the
    dataset has none, and an empty value for each absent or damaged type 2 attribute; the SEG's
    references get the source's own class back afterwards (:func:`_restore_sop_class`).
    """
    prepared = copy.deepcopy(source)  # pixel bytes are shared, not copied (immutable)
    for keyword in SEG_TYPE2_ATTRIBUTES:
        if keyword not in prepared or not _usable(prepared, keyword):
            setattr(prepared, keyword, "")
    sop_class = str(prepared.get("SOPClassUID", "") or "")
    if not sop_class:  # the reader took the class from the file meta; so does the SEG
        sop_class = str(source.file_meta.get("MediaStorageSOPClassUID", ""))
        prepared.SOPClassUID = sop_class
    if sop_class in (US_MULTIFRAME_IMAGE_STORAGE, US_MULTIFRAME_IMAGE_STORAGE_RETIRED):
        # Only single frames get a SEG: highdicom takes a multi-frame class for an enhanced
        # image with functional groups, so it is shown the single-frame class instead.
        prepared.SOPClassUID = US_IMAGE_STORAGE
        return prepared, sop_class
    if sop_class in RETIRED_TO_CURRENT:
        prepared.SOPClassUID = RETIRED_TO_CURRENT[sop_class]
        return prepared, sop_class
    return prepared, None


_VALUE_CLASSES = {"DA": DA, "TM": TM, "DT": DT}


def _usable(dataset: Dataset, keyword: str) -> bool:
    """Whether an attribute has its dictionary VR and a value highdicom can parse."""
    try:
        element = dataset[keyword]
        if dictionary_VR(element.tag) != element.VR:
            return False
        value = element.value
        parse = _VALUE_CLASSES.get(element.VR)
        if parse is not None and value not in (None, ""):
            parse(value)
        return True
    except Exception:  # a damaged value: the SEG gets the attribute empty
        return False


def _restore_sop_class(dataset: Dataset, current: str, retired: str) -> None:
    """Every ``ReferencedSOPClassUID`` equal to ``current`` becomes ``retired`` again."""
    for element in dataset.iterall():
        if element.keyword == "ReferencedSOPClassUID" and str(element.value) == str(current):
            element.value = retired


def nodule_segment_description(algorithm: Any = None) -> Any:
    """The SEG segment of a thyroid nodule (SNOMED CT: morphologically abnormal structure, nodule).

    Args:
        algorithm: A highdicom ``AlgorithmIdentificationSequence`` for an automatic segmentation;
            ``None`` for a manual one (a reader's contour).

    Returns:
        A ``highdicom.seg.SegmentDescription`` numbered 1 and labelled ``nodule``.
    """
    import highdicom as hd

    algorithm_type = hd.seg.SegmentAlgorithmTypeValues
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="nodule",
        segmented_property_category=hd.sr.CodedConcept(
            "49755003", "SCT", "Morphologically Abnormal Structure"
        ),
        segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
        algorithm_type=algorithm_type.MANUAL if algorithm is None else algorithm_type.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def _reread(dataset: Dataset) -> Dataset:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def dicom_outputs(
    source: Dataset,
    mask: np.ndarray,
    crop: tuple[int, int, int, int],
    *,
    deid: DeidentificationOptions | None,
    software_version: str,
    deidentified_source: Dataset | None = None,
) -> tuple[Dataset, Dataset | None]:
    """The SEG (and, when de-identifying, the de-identified source it references), in memory.

    Args:
        source: The original header and pixels.
        mask: The cropped mask.
        crop: Where the crop lies in the source's frame.
        deid: De-identification, or ``None`` to keep identities (then no source copy).
        software_version: Recorded in the SEG.
        deidentified_source: ``deidentify(source, deid)`` when the caller already made it.

    Returns:
        The SEG and the de-identified source (``None`` without de-identification).
    """
    segmentation = build_segmentation(source, mask, crop, software_version=software_version)
    if deid is None:
        return segmentation, None
    # highdicom shares some items between sequences; de-identification would then remap
    # their UIDs twice. A round trip through bytes gives every item its own object.
    segmentation = _reread(segmentation)
    # The SEG's pixels are the mask: no burned-in text to clean, so no pixel cleaning.
    segmentation = deidentify(segmentation, dataclasses.replace(deid, clean_pixel_data=False))
    clean = deidentified_source if deidentified_source is not None else deidentify(source, deid)
    return segmentation, clean


def write_dicom(path: Path, dataset: Dataset) -> Path:
    """Writes a DICOM Part 10 file atomically."""
    with atomic_path(path) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
    return path


def write_dicom_outputs(
    folder: Path,
    source: Dataset,
    mask: np.ndarray,
    crop: tuple[int, int, int, int],
    *,
    deid: DeidentificationOptions | None,
    software_version: str,
    segmentation_name: str = "segmentation.dcm",
    source_name: str = "source.dcm",
) -> tuple[str, str | None]:
    """Writes the SEG (and, when de-identifying, the de-identified source it references).

    Both are built before either is written, so a failure leaves neither.

    Returns:
        The SEG's file name and the source copy's file name (``None`` without de-identification).
    """
    segmentation, clean = dicom_outputs(
        source, mask, crop, deid=deid, software_version=software_version
    )
    if clean is not None:
        write_dicom(folder / source_name, clean)
    write_dicom(folder / segmentation_name, segmentation)
    return segmentation_name, source_name if clean is not None else None
