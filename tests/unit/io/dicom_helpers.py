"""Frames and identities shared by the DICOM tests."""

from __future__ import annotations

import numpy as np

from thyroid_monai.io.dicom_write import PatientInfo

REGION = (8, 12, 71, 59)  # min_x, min_y, max_x, max_y, inclusive
SPACING = (0.12, 0.09)  # x, y in mm: different on purpose
PATIENT = PatientInfo.fake("GARCIA^ANA", "MRN7654321", "20240315", "101530")
IDENTIFYING_TEXT = (
    "GARCIA", "MRN7654321", "20240315", "PHANTOM GENERAL", "HOUSE^GREGORY", "SONO^SAM",
    PATIENT.accession, PATIENT.device_serial, PATIENT.birth_date,
)  # fmt: skip


def smooth_frame(rows: int = 72, cols: int = 84, seed: int = 0) -> np.ndarray:
    """A smooth tissue-like frame with a bright text bar above the region (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    image = 90 + 60 * np.sin(x / 9.0 + rng.uniform(0, 3)) * np.cos(y / 11.0) + 0.8 * y
    image[(x - 40) ** 2 + (y - 35) ** 2 < 120] = 30  # a dark nodule
    frame = np.clip(image, 1, 254).astype(np.uint8)
    frame[1:8, 2:60] = 235  # burned-in text bar outside the region
    return frame


def cine(frames: int = 3) -> np.ndarray:
    return np.stack([smooth_frame(seed=i) for i in range(frames)])
