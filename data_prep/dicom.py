"""Converter ``dicom``: a tree of ultrasound DICOM exports, optional masks and labels.

Input:

- ``--in``: a folder tree of DICOM files (any names). Ultrasound images (US Image Storage and US
  Multi-frame Image Storage, retired UIDs too) become cases; DICOM SEG files anywhere in the tree
  are masks for the single-frame images they reference (cines take PNG masks); anything else is
  listed in ``rejected.csv``.
- ``--masks``: optional PNG masks, full-frame or already cropped, named after the image's path
  relative to ``--in`` without its suffix (``study1/img3.png``), with ``_f<frame>`` for one frame
  of a cine (``study1/cine_f12.png``), or after its SOP Instance UID. Values above half the
  maximum are nodule.
- ``--labels``: optional CSV keyed by ``file`` (path relative to ``--in``) or
  ``sop_instance_uid``, with ``tirads``, the ACR descriptor columns, ``pathology`` and
  ``patient`` (see :func:`data_prep.convert.label_fields`).

Cines keep their middle frame unless ``--frames`` says otherwise (``all`` turns every frame into an
image; the patient grouping keeps them in one fold).

De-identification is on by default (PS3.15 basic profile with Clean Pixel Data, salted
pseudonyms): patients become ``ANON-...`` pseudonyms, case IDs derive from the salted SOP Instance
UID, the manifest records source checksums but no source paths, and a de-identified copy of every
file goes to ``dicom/`` for the audit. A file is de-identified before any picture of it is made,
and its NIfTI images show only what the de-identified copy shows (0 outside the image regions).
Images are cropped to the 2D tissue region either way. ``rejected.csv`` still names the refused
source files, for the data owner: keep it with the sources rather than with the shared dataset.

Rejections (``rejected.csv``, stage column): files that are neither DICOM nor named ``.dcm`` and
DICOM files of other SOP classes are ``skipped``; a damaged or unreadable file (``read``), a second
file with a SOP Instance UID already seen (``read``, a duplicate export), a file that cannot be
de-identified (``deidentify``) and any other failure of one file are failures, which make the
command exit 1 while every other file is still converted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from data_prep.convert import (
    SKIPPED,
    ConversionError,
    Rejection,
    Sample,
    SourceCase,
    file_sha256,
    label_fields,
    read_labels_csv,
    safe_name,
)
from thyroid_monai import keys
from thyroid_monai.io.deid import (
    DeidentificationError,
    DeidentificationOptions,
    blank_outside_image_regions,
    deidentify,
    is_dicom_file,
    pseudonym,
)
from thyroid_monai.io.dicom import (
    ULTRASOUND_SOP_CLASSES,
    DicomReadError,
    FramePolicy,
    RegionPolicy,
    UltrasoundFrame,
    UltrasoundImage,
    read_dataset,
    read_ultrasound,
    sop_class_name,
)
from thyroid_monai.io.errors import safe_reason
from thyroid_monai.io.files import atomic_path

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class DicomCase(SourceCase):
    """One ultrasound DICOM file and what belongs to it."""

    path: Path
    root: Path
    key: str
    files: tuple[Path, ...]
    out_dir: Path
    frames: FramePolicy
    region: RegionPolicy
    scheme: str
    labels: dict[str, str] | None
    masks_dir: Path | None
    segmentation: Path | None
    deid: DeidentificationOptions | None
    _pending: tuple[str, Dataset] | None = field(default=None, init=False, repr=False)
    """The de-identified copy made by :meth:`convert`, written by :meth:`write_extras`."""

    def provenance(self) -> list[dict[str, Any]]:
        """Source checksums; without paths when de-identifying (paths may name patients)."""
        if self.deid is None:
            return super().provenance()
        return [{"path": None, "sha256": file_sha256(f)} for f in self.files]

    def recorded_key(self) -> str | None:
        """The key (a source path), or ``None`` when de-identifying.

        Paths may name patients: exports are often filed by patient ID.
        """
        return self.key if self.deid is None else None

    def record_name(self) -> str:
        """A hash of the key, salted when de-identifying.

        An unsalted hash of a path holding a patient ID can be reversed by trying every ID.
        """
        if self.deid is None:
            return super().record_name()
        salted = f"{self.deid.salt}\0{self.key}".encode()
        return f"{hashlib.sha256(salted).hexdigest()}.json"

    def convert(self) -> list[Sample]:
        """Reads, (de-identifies,) crops and labels every kept frame."""
        try:
            image = read_ultrasound(self.path, frames=self.frames, region=self.region)
        except DicomReadError as error:
            raise ConversionError(str(error), stage="read") from None
        dataset = image.dataset
        assert dataset is not None
        labels = self.labels or {}
        try:
            original_patient = labels.get("patient") or str(dataset.get("PatientID", "") or "")
        except Exception:  # a Patient ID of the wrong VR or length
            raise ConversionError(f"{self.path}: unreadable Patient ID", stage="read") from None
        if not original_patient:
            raise ConversionError(f"{self.path}: no Patient ID and no 'patient' in the labels CSV")
        if self.deid is not None:
            patient = pseudonym(original_patient, self.deid.salt)
            digest = hashlib.sha256(f"{self.deid.salt}\x00{image.sop_instance_uid}".encode())
            stem = f"{patient}_{digest.hexdigest()[:10]}"
            self._deidentify(stem, image)
        else:
            patient = original_patient
            stem = safe_name(str(Path(self.key).with_suffix("")))
        fields = (
            label_fields(labels, self.scheme, str(self.path)) if labels else {keys.TIRADS: None}
        )
        samples = []
        for frame in image.frames:
            multi = image.number_of_frames > 1
            extra = {keys.FRAME: frame.number} if multi else {}
            samples.append(
                Sample(
                    case_id=f"{stem}_f{frame.number:03d}" if multi else stem,
                    patient=patient,
                    image=frame.image,
                    spacing_mm=image.spacing_mm,
                    mask=self._mask(image, frame.number),
                    fields={**fields, **extra, keys.SOURCE: "dicom"},
                )
            )
        return samples

    def _deidentify(self, stem: str, image: UltrasoundImage) -> None:
        """De-identifies the file and blanks its frames as the copy shows them (no writing)."""
        assert self.deid is not None
        assert image.dataset is not None
        try:
            clean = deidentify(image.dataset, self.deid)
            for index, frame in enumerate(image.frames):
                blanked = blank_outside_image_regions(frame.image, image.dataset, image.crop)
                image.frames[index] = UltrasoundFrame(frame.number, blanked)
        except DeidentificationError as error:
            raise ConversionError(f"{self.path}: {error}", stage="deidentify") from None
        except Exception as error:  # a value de-identification could not handle
            raise ConversionError(
                f"{self.path}: de-identification failed ({safe_reason(error)})", stage="deidentify"
            ) from None
        self._pending = (stem, clean)

    def write_extras(self, out_dir: Path) -> list[dict[str, str]]:
        """Writes the de-identified copy to ``dicom/`` (when de-identifying)."""
        if self._pending is None:
            return []
        stem, clean = self._pending
        relative = f"dicom/{stem}.dcm"
        with atomic_path(out_dir / relative) as temporary:
            clean.save_as(temporary, enforce_file_format=True)
        self._pending = None
        return [{"path": relative, "sha256": file_sha256(out_dir / relative)}]

    def _mask(self, image: UltrasoundImage, frame: int) -> np.ndarray | None:
        full = (
            self._segmentation_mask(image, frame)
            if self.segmentation
            else self._png_mask(image, frame)
        )
        if full is None:
            return None
        rows, cols = int(image.dataset.Rows), int(image.dataset.Columns)  # type: ignore[union-attr]
        cropped_shape = image.frames[0].image.shape
        if full.shape == (rows, cols):
            return image.crop_array(full)
        if full.shape == cropped_shape:
            return full
        raise ConversionError(
            f"{self.path}: mask of shape {full.shape} fits neither the frame {(rows, cols)} nor "
            f"the cropped image {cropped_shape}"
        )

    def _png_mask(self, image: UltrasoundImage, frame: int) -> np.ndarray | None:
        if self.masks_dir is None:
            return None
        stem = Path(self.key).with_suffix("")
        candidates = [
            self.masks_dir / f"{stem}_f{frame}.png",
            self.masks_dir / f"{stem}.png",
            self.masks_dir / f"{image.sop_instance_uid}.png",
        ]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            return None
        try:
            values = np.asarray(Image.open(path).convert("L"))
        except (OSError, ValueError, SyntaxError) as error:
            raise ConversionError(f"{path}: unreadable mask ({safe_reason(error)})") from None
        top = int(values.max())
        return values > (top / 2 if top > 1 else 0)

    def _segmentation_mask(self, image: UltrasoundImage, frame: int) -> np.ndarray:
        try:
            import highdicom as hd
        except ImportError:
            raise ConversionError(
                "DICOM SEG masks need highdicom; install the 'dicom' extra: "
                "pip install 'thyroid-monai[dicom]'"
            ) from None
        if image.number_of_frames > 1:
            # highdicom places SEG frames of a multi-frame source by its frame of reference, which
            # ultrasound cines lack; per-frame PNG masks cover that case.
            raise ConversionError(
                f"{self.segmentation}: DICOM SEG masks of multi-frame images are not supported; "
                "give PNG masks named <file>_f<frame>.png"
            )
        try:
            segmentation = hd.seg.segread(str(self.segmentation))
            pixels = segmentation.get_pixels_by_source_instance(
                [image.sop_instance_uid], combine_segments=True
            )
        except Exception as error:  # highdicom raises several types for unusable SEGs
            raise ConversionError(
                f"{self.segmentation}: unusable DICOM SEG ({safe_reason(error)})"
            ) from None
        return np.asarray(pixels[0]) > 0


def _referenced_instances(dataset: Any) -> list[str]:
    uids: list[str] = []
    for series in dataset.get("ReferencedSeriesSequence", []):
        uids.extend(
            str(i.ReferencedSOPInstanceUID) for i in series.get("ReferencedInstanceSequence", [])
        )
    return uids


def _discover_file(
    path: Path, relative: str, seen: dict[str, str]
) -> Rejection | tuple[str, list[str]]:
    """What one file under ``--in`` is.

    Returns:
        A rejection; a SEG's class and the instances it references; or an ultrasound image's
        class and its SOP Instance UID (``seen`` maps instance UIDs to their first file).
    """
    claims_dicom = path.suffix.lower() in (".dcm", ".dicom") or is_dicom_file(path)
    try:
        dataset = read_dataset(path, stop_before_pixels=True)
        sop_class = str(dataset.get("SOPClassUID", ""))
        if sop_class == SEGMENTATION_STORAGE:
            return sop_class, _referenced_instances(dataset)
        if sop_class not in ULTRASOUND_SOP_CLASSES:
            name = sop_class_name(sop_class) if sop_class else "none"
            return Rejection(relative, f"not an ultrasound image (SOP class {name})", SKIPPED)
        uid = str(dataset.get("SOPInstanceUID", "") or "")
    except DicomReadError as error:
        return Rejection(relative, str(error), "read" if claims_dicom else SKIPPED)
    except Exception as error:  # a header damaged beyond what read_dataset reports
        return Rejection(relative, f"{relative}: damaged DICOM data ({safe_reason(error)})", "read")
    if not uid:
        return Rejection(relative, f"{relative}: no SOP Instance UID", "read")
    if uid in seen:
        return Rejection(
            relative, f"{relative}: same SOP Instance UID as {seen[uid]} (duplicate export)", "read"
        )
    seen[uid] = relative
    return sop_class, [uid]


@dataclass
class _Tree:
    """The DICOM files of a source tree: ultrasound images, SEG masks and the files refused."""

    images: list[tuple[Path, str]] = field(default_factory=list)
    """Each image with its SOP Instance UID, in path order."""
    segmentations: dict[str, Path] = field(default_factory=dict)
    """The SEG file of each referenced SOP Instance UID."""
    rejections: list[Rejection] = field(default_factory=list)


def _scan_tree(root: Path, masks: Path | None, skip: set[Path]) -> _Tree:
    """Reads the header of every file under ``root`` (hidden ones, ``skip`` and masks aside)."""
    tree = _Tree()
    seen: dict[str, str] = {}
    seg_files: dict[Path, list[str]] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if path.resolve() in skip or (
            masks is not None and masks.resolve() in path.resolve().parents
        ):
            continue
        found = _discover_file(path, relative.as_posix(), seen)
        if isinstance(found, Rejection):
            tree.rejections.append(found)
        elif found[0] == SEGMENTATION_STORAGE:
            seg_files[path] = found[1]
            for uid in found[1]:
                tree.segmentations[uid] = path
        else:
            tree.images.append((path, found[1][0]))
    known = {uid for _, uid in tree.images}
    for path, referenced in seg_files.items():
        if not set(referenced) & known:
            tree.rejections.append(
                Rejection(
                    path.relative_to(root).as_posix(),
                    "a DICOM SEG referencing no ultrasound image here",
                    SKIPPED,
                )
            )
    return tree


def _png_masks(masks: Path, key: str, uid: str) -> list[Path]:
    """The PNG masks of an image: named after its path (``_f<frame>`` for cines) or its UID."""
    stem = Path(key).with_suffix("")
    pngs = sorted((masks / stem.parent).glob(f"{stem.name}*.png"))
    return pngs + [p for p in [masks / f"{uid}.png"] if p.is_file()]


def discover_dicom(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    masks_dir: str | Path | None = None,
    labels_csv: str | Path | None = None,
    frames: FramePolicy = "middle",
    region: RegionPolicy = "largest",
    scheme: str = "acr",
    deid: DeidentificationOptions | None = None,
) -> tuple[list[DicomCase], list[Rejection]]:
    """Finds the ultrasound images, their SEG masks and labels under ``in_dir``.

    Returns:
        The cases and the files refused while looking (non-DICOM, other SOP classes).

    Raises:
        FileNotFoundError: If ``in_dir`` (or a given masks folder or labels file) is missing.
    """
    root = Path(in_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    masks = Path(masks_dir) if masks_dir else None
    if masks is not None and not masks.is_dir():
        raise FileNotFoundError(f"masks folder not found: {masks}")
    labels = read_labels_csv(labels_csv, ["file", "sop_instance_uid"]) if labels_csv else {}
    skip = {Path(labels_csv).resolve()} if labels_csv else set()
    tree = _scan_tree(root, masks, skip)
    cases = []
    for path, uid in tree.images:
        key = path.relative_to(root).as_posix()
        row = labels.get(key) or labels.get(uid)
        segmentation = tree.segmentations.get(uid)
        pngs = _png_masks(masks, key, uid) if masks is not None else []
        files = (path,) + ((segmentation,) if segmentation else ()) + tuple(pngs)
        cases.append(
            DicomCase(
                path=path,
                root=root,
                key=key,
                files=files,
                out_dir=Path(out_dir),
                frames=frames,
                region=region,
                scheme=scheme,
                labels=row,
                masks_dir=masks,
                segmentation=segmentation,
                deid=deid,
            )
        )
    return cases, tree.rejections
