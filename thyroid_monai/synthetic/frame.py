"""A scanner-like frame around the tissue image: burned-in text, a depth ruler, a dark border.

Exported ultrasound frames carry the patient's name, ID and date, the probe and presets burned
into the pixels, and a depth ruler beside the image. Pipelines must crop to the tissue region
(given by the DICOM Sequence of Ultrasound Regions) and must blank the rest when
de-identifying, so the phantom produces such frames, with fake identifying text on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_SURNAMES = ("GARCIA", "SMITH", "NGUYEN", "MULLER", "ROSSI", "KOWALSKI", "TANAKA", "OKAFOR")
_GIVEN = ("ANA", "JOHN", "MEI", "LUCA", "FATIMA", "PIOTR", "YUKI", "CHIDI")

TOP, BOTTOM, LEFT, RIGHT = 30, 14, 8, 34
"""Frame margins in pixels around the tissue image."""


@dataclass(frozen=True)
class BurnedInText:
    """The fake identifying and acquisition text written into a frame."""

    patient_name: str
    patient_id: str
    study_date: str
    study_time: str
    institution: str
    probe: str
    preset: str

    @classmethod
    def sample(cls, rng: np.random.Generator, side: str) -> BurnedInText:
        """Draws plausible fake values (never real people)."""
        year, month, day = rng.integers(2019, 2026), rng.integers(1, 13), rng.integers(1, 29)
        return cls(
            patient_name=f"{rng.choice(_SURNAMES)}^{rng.choice(_GIVEN)}",
            patient_id=f"MRN{int(rng.integers(10**6, 10**7))}",
            study_date=f"{year:04d}{month:02d}{day:02d}",
            study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
            institution="PHANTOM GENERAL HOSPITAL",
            probe="L12-5",
            preset=f"THY {side} TRANS",
        )


@dataclass(frozen=True)
class FramedImage:
    """A full frame and where its tissue region is.

    Attributes:
        image: ``uint8`` frame, ``(rows, columns)``.
        region: ``(min_x, min_y, max_x, max_y)`` of the tissue region, inclusive, in pixels, as in
            DICOM's RegionLocationMinX0 .. RegionLocationMaxY1.
        text: The burned-in text.
    """

    image: np.ndarray
    region: tuple[int, int, int, int]
    text: BurnedInText


def add_scanner_frame(
    tissue: np.ndarray, spacing_mm: tuple[float, float], text: BurnedInText
) -> FramedImage:
    """Places a tissue image in a frame with burned-in text and a depth ruler.

    Args:
        tissue: ``uint8`` tissue image, ``(rows, columns)``.
        spacing_mm: ``(x, y)`` pixel spacing, used to place the ruler's centimetre ticks.
        text: What to burn into the frame.

    Returns:
        The frame and the tissue region's bounds.
    """
    rows, cols = tissue.shape
    frame = np.zeros((rows + TOP + BOTTOM, cols + LEFT + RIGHT), dtype=np.uint8)
    frame[TOP : TOP + rows, LEFT : LEFT + cols] = tissue
    _stamp(frame, f"{text.institution}  {text.patient_name}", 2, 1, 230)
    _stamp(frame, f"ID {text.patient_id}  {text.study_date} {text.study_time}", 2, 14, 230)
    _stamp(frame, f"{text.probe}  {text.preset}", 2, rows + TOP + 1, 200)
    # Depth ruler: a tick every 5 mm, a long tick and a label every centimetre.
    x_ruler = LEFT + cols + 4
    frame[TOP : TOP + rows, x_ruler] = 180
    depth_mm = rows * spacing_mm[1]
    for mm in range(0, int(depth_mm) + 1, 5):
        y = TOP + round(mm / spacing_mm[1])
        long_tick = mm % 10 == 0
        frame[y, x_ruler : x_ruler + (7 if long_tick else 4)] = 220
        if long_tick and mm:
            _stamp(frame, str(mm // 10), x_ruler + 9, y - 6, 220)
    region = (LEFT, TOP, LEFT + cols - 1, TOP + rows - 1)
    return FramedImage(frame, region, text)


@lru_cache(maxsize=512)
def _text_bitmap(text: str) -> np.ndarray:
    """Coverage (0..1) of a line of text in the default font; cached, text repeats a lot."""
    font = ImageFont.load_default()
    _, _, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (int(right), int(bottom)), 0)
    ImageDraw.Draw(canvas).text((0, 0), text, fill=255, font=font)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _stamp(frame: np.ndarray, text: str, x: int, y: int, grey: int) -> None:
    """Burns text into the frame at ``(x, y)`` (top left), clipped to the frame."""
    coverage = _text_bitmap(text)
    height = min(coverage.shape[0], frame.shape[0] - y)
    width = min(coverage.shape[1], frame.shape[1] - x)
    window = frame[y : y + height, x : x + width]
    np.maximum(window, np.rint(coverage[:height, :width] * grey).astype(np.uint8), out=window)
