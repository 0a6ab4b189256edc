"""Converter ``stanford-cine``: the Stanford AIMI thyroid ultrasound cine-clip dataset.

Layout: ``dataset.hdf5`` with ``image`` ``(N, H, W)`` uint8, ``mask`` ``(N, H, W)`` in {0, 255},
``annot_id`` (bytes such as ``b"123_"``) and ``frame_num``; ``metadata.csv`` with one row per
``annot_id`` (``age, sex, location, size_x, size_y, size_z, ti-rads_composition,
ti-rads_echogenicity, ti-rads_shape, ti-rads_margin, ti-rads_echogenicfoci, ti-rads_level,
histopath_diagnosis``).

The HDF5 file (about 36 GB) is read lazily: only ``annot_id`` and ``frame_num`` are read whole to
group frames into clips, and each kept frame is read by index. One case is one clip; the frame
policy picks frames (``all`` with an optional stride, ``middle``, ``first`` or a frame number in
``frame_num`` terms). The patient is ``annot_id`` without its trailing underscore.

Labels: ``ti-rads_level`` becomes the ACR level; the descriptor columns are kept as they are
under ``stanford_descriptors`` (their encoding is not documented well enough to map them to ACR
descriptors without guessing); ``histopath_diagnosis`` gives ``pathology`` when it says benign or
malignant. Spacing is not in the files: ``null``.

Re-runs compare a fingerprint of the HDF5 file (size and modification time) and of the clip's
metadata row rather than a checksum of 36 GB.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.convert import (
    SKIPPED,
    ConversionError,
    Rejection,
    Sample,
    SourceCase,
    read_labels_csv,
)
from thyroid_monai import keys
from thyroid_monai.io.dicom import FramePolicy
from thyroid_monai.tirads import UnknownLabelError, normalise_level

DESCRIPTOR_COLUMNS = (
    "ti-rads_composition",
    "ti-rads_echogenicity",
    "ti-rads_shape",
    "ti-rads_margin",
    "ti-rads_echogenicfoci",
)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "the Stanford cine-clip converter needs h5py; install the 'datasets' extra: "
            "pip install 'thyroid-monai[datasets]'"
        ) from None
    return h5py


def pick_frames(frame_numbers: list[int], policy: FramePolicy, stride: int = 1) -> list[int]:
    """Positions (into ``frame_numbers``, sorted by frame) that a policy keeps.

    Raises:
        ValueError: For a frame number the clip does not have or an unknown policy.
    """
    if policy == "all":
        return list(range(0, len(frame_numbers), max(stride, 1)))
    if policy == "middle":
        return [(len(frame_numbers) - 1) // 2]
    if policy == "first":
        return [0]
    if isinstance(policy, int) and not isinstance(policy, bool):
        if policy not in frame_numbers:
            raise ValueError(f"frame {policy} is not in this clip")
        return [frame_numbers.index(policy)]
    raise ValueError(f"unknown frame policy {policy!r}")


@dataclass
class CineClip(SourceCase):
    """One annotated clip: the HDF5 rows of one ``annot_id``."""

    key: str
    root: Path
    files: tuple[Path, ...]
    hdf5: Path
    rows: list[int]
    frame_numbers: list[int]
    metadata: dict[str, str]
    frames: FramePolicy
    stride: int
    skipped: list[Rejection] = field(default_factory=list)

    def provenance(self) -> list[dict[str, Any]]:
        """File fingerprint and a hash of the clip's metadata row (see the module notes)."""
        stat = self.hdf5.stat()
        row = hashlib.sha256(json.dumps(self.metadata, sort_keys=True).encode()).hexdigest()
        return [
            {
                "path": self.hdf5.name,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "annot_id": self.key,
                "rows": self.rows,
                "metadata_sha256": row,
            }
        ]

    def convert(self) -> list[Sample]:
        """The kept frames of the clip with their masks."""
        try:
            positions = pick_frames(self.frame_numbers, self.frames, self.stride)
        except ValueError as error:
            raise ConversionError(f"clip {self.key}: {error}") from None
        fields = self._fields()
        patient = self.key.rstrip("_")
        samples = []
        with _h5py().File(self.hdf5, "r") as handle:
            for position in positions:
                row, number = self.rows[position], self.frame_numbers[position]
                image = np.asarray(handle["image"][row])
                mask = np.asarray(handle["mask"][row])
                if image.ndim != 2 or image.dtype != np.uint8:
                    raise ConversionError(
                        f"{self.hdf5}: image {row} is {image.dtype} {image.shape}"
                    )
                samples.append(
                    Sample(
                        f"stanford_{patient}_f{number:04d}",
                        patient,
                        image,
                        None,
                        mask > 127,
                        {**fields, keys.FRAME: number},
                    )
                )
        return samples

    def _fields(self) -> dict[str, Any]:
        level = self.metadata.get("ti-rads_level", "")
        try:
            tirads = normalise_level(level, "acr") if level else None
        except UnknownLabelError as error:
            raise ConversionError(f"clip {self.key}: {error}") from None
        fields: dict[str, Any] = {
            keys.TIRADS: tirads,
            "stanford_descriptors": {c: self.metadata.get(c, "") for c in DESCRIPTOR_COLUMNS},
            keys.SOURCE: "stanford-cine",
        }
        diagnosis = self.metadata.get("histopath_diagnosis", "").lower()
        if "malignant" in diagnosis:
            fields[keys.PATHOLOGY] = "malignant"
        elif "benign" in diagnosis:
            fields[keys.PATHOLOGY] = "benign"
        return fields


def discover_stanford(
    in_dir: str | Path, *, frames: FramePolicy = "middle", stride: int = 1
) -> tuple[list[CineClip], list[Rejection]]:
    """The clips of the HDF5 file, joined with their metadata rows.

    Raises:
        FileNotFoundError: If ``dataset.hdf5`` or ``metadata.csv`` is missing.
        ValueError: If the HDF5 file lacks a dataset or its lengths disagree.
    """
    root = Path(in_dir)
    hdf5, metadata_csv = root / "dataset.hdf5", root / "metadata.csv"
    for required in (hdf5, metadata_csv):
        if not required.is_file():
            raise FileNotFoundError(f"Stanford cine-clip file not found: {required}")
    metadata = read_labels_csv(metadata_csv, ["annot_id"])
    with _h5py().File(hdf5, "r") as handle:
        missing = [
            name for name in ("image", "mask", "annot_id", "frame_num") if name not in handle
        ]
        if missing:
            raise ValueError(f"{hdf5}: datasets missing: {missing}")
        ids = [v.decode() if isinstance(v, bytes) else str(v) for v in handle["annot_id"][()]]
        numbers = [int(v) for v in np.asarray(handle["frame_num"][()]).ravel()]
        if not len(ids) == len(numbers) == handle["image"].shape[0] == handle["mask"].shape[0]:
            raise ValueError(f"{hdf5}: image, mask, annot_id and frame_num lengths differ")
    clips: dict[str, list[tuple[int, int]]] = {}
    for row, (annot, number) in enumerate(zip(ids, numbers, strict=True)):
        clips.setdefault(annot, []).append((number, row))
    cases: list[CineClip] = []
    rejections: list[Rejection] = []
    for annot in sorted(clips):
        members = sorted(clips[annot])
        meta = metadata.get(annot) or metadata.get(annot.rstrip("_"))
        if meta is None:
            rejections.append(Rejection(f"{hdf5.name}:{annot}", "no row in metadata.csv", SKIPPED))
            continue
        cases.append(
            CineClip(
                key=annot,
                root=root,
                files=(hdf5,),
                hdf5=hdf5,
                rows=[r for _, r in members],
                frame_numbers=[n for n, _ in members],
                metadata=meta,
                frames=frames,
                stride=stride,
            )
        )
    return cases, rejections
