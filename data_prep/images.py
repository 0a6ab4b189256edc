"""Converters of image-file datasets: ``tn3k`` and ``folder``.

Both read ordinary image files (PNG, JPEG, BMP, TIFF) with Pillow, convert colour to grayscale
(ITU-R 601 luma) and masks to 0/1 (above half the mask's maximum: JPEG masks are not exactly
0/255). Neither source records a pixel spacing, so spacing is ``null`` unless a labels CSV gives
``spacing_x_mm`` and ``spacing_y_mm``.

``tn3k`` (Gong et al., ISBI 2021): ``trainval-image/``, ``trainval-mask/``, ``test-image/``,
``test-mask/``, ``tn3k-trainval-fold{0..4}.json`` (``{"train": [i], "val": [i]}``, indices into
the image names sorted by their number) and optionally ``label4trainval.csv`` /
``label4test.csv`` (image name or number and 0/1 or benign/malignant) as ``pathology``. The
official test images are the fixed held-out set. TN3K gives no patient IDs, so every image is
its own patient, and byte-identical images are grouped by the splits. The dataset's folds are
kept with ``folds_from="dataset"`` (checked for duplicates across folds).

``folder``: ``images/`` and optional ``masks/`` (same file stem) and a labels CSV with ``image``
(file name), and optionally ``patient``, ``tirads``, descriptor columns, ``pathology``,
``spacing_x_mm``, ``spacing_y_mm``. Without a ``patient`` column every image is its own patient.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_prep.convert import (
    SKIPPED,
    ConversionError,
    Rejection,
    Sample,
    SourceCase,
    label_fields,
    read_labels_csv,
    safe_name,
)
from thyroid_monai import keys

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_gray(path: Path) -> np.ndarray:
    """A ``uint8`` grayscale image; raises :class:`ConversionError` naming an unreadable file."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except OSError as error:
        raise ConversionError(f"{path}: unreadable image ({error})") from None


def read_mask(path: Path) -> np.ndarray:
    """A 0/1 mask: values above half the file's maximum are nodule."""
    values = read_gray(path)
    top = int(values.max())
    return (values > (top / 2 if top > 1 else 0)).astype(np.uint8)


@dataclass
class ImageCase(SourceCase):
    """One image file with an optional mask and its datalist fields."""

    key: str
    root: Path
    files: tuple[Path, ...]
    case_id: str
    patient: str
    image_path: Path
    mask_path: Path | None
    spacing_mm: tuple[float, float] | None
    fields: dict[str, Any]
    skipped: list[Rejection] = field(default_factory=list)

    def convert(self) -> list[Sample]:
        """The image and its mask."""
        image = read_gray(self.image_path)
        mask = read_mask(self.mask_path) if self.mask_path else None
        return [Sample(self.case_id, self.patient, image, self.spacing_mm, mask, dict(self.fields))]


def _number(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        raise ValueError(f"{path}: TN3K image names are numbers") from None


def _tn3k_labels(path: Path) -> dict[int, str]:
    """``{image number: benign|malignant}`` from a TN3K label CSV (header optional)."""
    labels: dict[int, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) < 2:
                continue
            name, value = row[0].strip(), row[1].strip().lower()
            if not Path(name).stem.isdigit():
                if number == 1:
                    continue  # header
                raise ValueError(f"{path}: line {number}: {name!r} is not an image number")
            if value in ("0", "benign"):
                labels[int(Path(name).stem)] = "benign"
            elif value in ("1", "malignant"):
                labels[int(Path(name).stem)] = "malignant"
            else:
                raise ValueError(
                    f"{path}: line {number}: label {value!r} is not 0/1/benign/malignant"
                )
    return labels


def discover_tn3k(
    in_dir: str | Path, *, folds_from: str = "computed"
) -> tuple[list[ImageCase], list[Rejection], dict[str, Any]]:
    """The TN3K cases; the header extras name the fixed test split and kept folds.

    Raises:
        FileNotFoundError: If the TN3K folders are missing.
        ValueError: For inconsistent fold files.
    """
    root = Path(in_dir)
    cases: list[ImageCase] = []
    rejections: list[Rejection] = []
    fixed_test: list[str] = []
    for split in ("trainval", "test"):
        images_dir = root / f"{split}-image"
        if not images_dir.is_dir():
            raise FileNotFoundError(f"TN3K folder not found: {images_dir}")
        masks_dir = root / f"{split}-mask"
        label_file = root / f"label4{split}.csv"
        labels = _tn3k_labels(label_file) if label_file.is_file() else {}
        images = sorted(
            (p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_number
        )
        fold_of = (
            _tn3k_folds(root, len(images))
            if (split == "trainval" and folds_from == "dataset")
            else {}
        )
        for index, path in enumerate(images):
            mask = masks_dir / path.name
            if not mask.is_file():
                rejections.append(
                    Rejection(
                        path.relative_to(root).as_posix(), "no mask in " + masks_dir.name, SKIPPED
                    )
                )
                continue
            case_id = f"tn3k_{split}_{_number(path):04d}"
            fields: dict[str, Any] = {keys.TIRADS: None, keys.SOURCE: "tn3k"}
            if _number(path) in labels:
                fields[keys.PATHOLOGY] = labels[_number(path)]
            if index in fold_of:
                fields[keys.FOLD] = fold_of[index]
            if split == "test":
                fixed_test.append(case_id)
            cases.append(
                ImageCase(
                    key=path.relative_to(root).as_posix(),
                    root=root,
                    files=(path, mask),
                    case_id=case_id,
                    patient=case_id,
                    image_path=path,
                    mask_path=mask,
                    spacing_mm=None,
                    fields=fields,
                )
            )
    extras = {"fixed_test": fixed_test, "keep_folds": folds_from == "dataset"}
    return cases, rejections, extras


def _tn3k_folds(root: Path, count: int) -> dict[int, int]:
    fold_of: dict[int, int] = {}
    files = sorted(root.glob("tn3k-trainval-fold*.json"))
    if not files:
        raise FileNotFoundError(f"no tn3k-trainval-fold*.json in {root} (use computed folds)")
    for fold, path in enumerate(files):
        for index in json.loads(path.read_text())["val"]:
            if not 0 <= index < count:
                raise ValueError(f"{path}: index {index} outside the {count} trainval images")
            if index in fold_of:
                raise ValueError(f"{path}: image {index} is already in fold {fold_of[index]}")
            fold_of[index] = fold
    return fold_of


def _spacing(row: dict[str, str], where: str) -> tuple[float, float] | None:
    x, y = row.get("spacing_x_mm", ""), row.get("spacing_y_mm", "")
    if not x and not y:
        return None
    try:
        spacing = (float(x), float(y))
    except ValueError:
        raise ConversionError(f"{where}: spacing_x_mm/spacing_y_mm must be numbers") from None
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ConversionError(f"{where}: spacing must be positive, got {spacing}")
    return spacing


def discover_folder(
    in_dir: str | Path,
    *,
    images: str = "images",
    masks: str | None = "masks",
    labels_csv: str | Path | None = None,
    scheme: str = "acr",
) -> tuple[list[ImageCase], list[Rejection]]:
    """Cases of a plain folder of images, masks and labels.

    Raises:
        FileNotFoundError: If the images folder is missing.
    """
    root = Path(in_dir)
    images_dir = root / images
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    masks_dir = root / masks if masks and (root / masks).is_dir() else None
    labels = read_labels_csv(labels_csv, ["image"]) if labels_csv else {}
    cases: list[ImageCase] = []
    rejections: list[Rejection] = []
    for path in sorted(images_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            rejections.append(
                Rejection(relative, f"not an image file ({path.suffix or 'no suffix'})", SKIPPED)
            )
            continue
        name = path.relative_to(images_dir).as_posix()
        row = labels.get(name) or labels.get(path.name) or {}
        mask = None
        if masks_dir is not None:
            found = [
                c
                for c in masks_dir.glob(f"{Path(name).with_suffix('')}.*")
                if c.suffix.lower() in IMAGE_SUFFIXES
            ]
            mask = found[0] if found else None
        try:
            fields = label_fields(row, scheme, relative) if row else {keys.TIRADS: None}
            spacing = _spacing(row, relative)
        except ConversionError as error:
            rejections.append(Rejection(relative, str(error)))
            continue
        case_id = safe_name(str(Path(name).with_suffix("")))
        cases.append(
            ImageCase(
                key=relative,
                root=root,
                files=(path,) + ((mask,) if mask else ()),
                case_id=case_id,
                patient=row.get("patient") or case_id,
                image_path=path,
                mask_path=mask,
                spacing_mm=spacing,
                fields={**fields, keys.SOURCE: "folder"},
            )
        )
    return cases, rejections
