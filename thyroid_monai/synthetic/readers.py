"""Simulated readers: how radiologists disagree on a nodule's contour and on its TI-RADS level.

Each reader has a fixed style for a whole dataset, as in a reader study:

* **contour style**: a systematic dilation (positive) or erosion (negative) in millimetres, a
  smoothing habit (lobulations traced more roundly), and a hand-drawn polygon with a limited number
  of vertices, each placed with some radial jitter;
* **grading habit**: a chance to miss punctate echogenic foci (they are small), a chance to
  over-call a smooth or ill-defined margin as lobulated/irregular, and a chance to grade the level
  one step up or down from what its own descriptors give.

The amount of disagreement is one preset (``none``, ``moderate``, ``strong``) that sets the
distributions the reader styles are drawn from. With ``none`` every reader returns the truth.

Consensus: the consensus mask is the pixel-wise majority (a pixel that at least half of the readers
include); the majority level is the most frequent reader level, with ties going to the higher,
more suspicious level (the conservative clinical choice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from thyroid_monai.synthetic.render import NoduleGeometry
from thyroid_monai.tirads import ACR_LEVELS, AcrDescriptors, EchogenicFocus, Margin, acr_level_of

Variability = Literal["none", "moderate", "strong"]


@dataclass(frozen=True)
class VariabilityPreset:
    """Distributions of reader styles for one level of inter-reader disagreement.

    Attributes:
        dilation_sd_mm: Standard deviation of a reader's systematic dilation across readers.
        dilation_jitter_mm: Per-image variation of that dilation.
        smoothing: Range of the fraction of lobulation a reader smooths away.
        vertices: Range of polygon vertex counts.
        vertex_jitter_mm: Range of radial vertex jitter (standard deviation).
        p_adjacent: Range of the chance to grade one level up or down.
        p_miss_punctate: Range of the chance to miss punctate foci when present.
        p_overcall_margin: Range of the chance to call a smooth or ill-defined margin lobulated.
    """

    dilation_sd_mm: float
    dilation_jitter_mm: float
    smoothing: tuple[float, float]
    vertices: tuple[int, int]
    vertex_jitter_mm: tuple[float, float]
    p_adjacent: tuple[float, float]
    p_miss_punctate: tuple[float, float]
    p_overcall_margin: tuple[float, float]


VARIABILITY_PRESETS: dict[str, VariabilityPreset] = {
    "none": VariabilityPreset(0.0, 0.0, (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    "moderate": VariabilityPreset(
        dilation_sd_mm=0.35,
        dilation_jitter_mm=0.15,
        smoothing=(0.3, 0.6),
        vertices=(20, 32),
        vertex_jitter_mm=(0.1, 0.2),
        p_adjacent=(0.08, 0.15),
        p_miss_punctate=(0.1, 0.25),
        p_overcall_margin=(0.05, 0.12),
    ),
    "strong": VariabilityPreset(
        dilation_sd_mm=0.8,
        dilation_jitter_mm=0.3,
        smoothing=(0.6, 0.95),
        vertices=(10, 18),
        vertex_jitter_mm=(0.25, 0.45),
        p_adjacent=(0.2, 0.32),
        p_miss_punctate=(0.3, 0.5),
        p_overcall_margin=(0.15, 0.3),
    ),
}


@dataclass(frozen=True)
class ReaderStyle:
    """One simulated reader's habits (fixed for a dataset).

    Attributes:
        name: Reader identifier.
        exact: Returns the truth (the ``none`` preset).
        dilation_mm: Systematic outward (positive) or inward (negative) offset of the contour.
        dilation_jitter_mm: Per-image variation of the offset.
        smoothing: Fraction of the outline's lobulation the reader smooths away (0..1).
        vertices: Number of polygon vertices the reader places.
        vertex_jitter_mm: Radial standard deviation of each vertex.
        p_adjacent: Chance to grade one level up or down.
        p_miss_punctate: Chance to miss punctate foci when present.
        p_overcall_margin: Chance to call a smooth or ill-defined margin lobulated/irregular.
    """

    name: str
    exact: bool = True
    dilation_mm: float = 0.0
    dilation_jitter_mm: float = 0.0
    smoothing: float = 0.0
    vertices: int = 0
    vertex_jitter_mm: float = 0.0
    p_adjacent: float = 0.0
    p_miss_punctate: float = 0.0
    p_overcall_margin: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary of the style."""
        return asdict(self)


def sample_reader_styles(
    rng: np.random.Generator, count: int, variability: Variability | str
) -> list[ReaderStyle]:
    """Draws ``count`` reader styles for a variability preset.

    Raises:
        ValueError: For an unknown preset or a count below 1.
    """
    if variability not in VARIABILITY_PRESETS:
        raise ValueError(
            f"unknown reader variability {variability!r}; use one of {list(VARIABILITY_PRESETS)}"
        )
    if count < 1:
        raise ValueError(f"at least one reader is needed, got {count}")
    preset = VARIABILITY_PRESETS[variability]
    if variability == "none":
        return [ReaderStyle(name=f"reader{i + 1}") for i in range(count)]
    return [
        ReaderStyle(
            name=f"reader{i + 1}",
            exact=False,
            dilation_mm=float(rng.normal(0.0, preset.dilation_sd_mm)),
            dilation_jitter_mm=preset.dilation_jitter_mm,
            smoothing=float(rng.uniform(*preset.smoothing)),
            vertices=int(rng.integers(preset.vertices[0], preset.vertices[1] + 1)),
            vertex_jitter_mm=float(rng.uniform(*preset.vertex_jitter_mm)),
            p_adjacent=float(rng.uniform(*preset.p_adjacent)),
            p_miss_punctate=float(rng.uniform(*preset.p_miss_punctate)),
            p_overcall_margin=float(rng.uniform(*preset.p_overcall_margin)),
        )
        for i in range(count)
    ]


@dataclass(frozen=True)
class ReaderAnnotation:
    """What one reader reported for one image."""

    reader: str
    mask: np.ndarray
    descriptors: AcrDescriptors
    level: str


def reader_descriptors(
    rng: np.random.Generator, style: ReaderStyle, truth: AcrDescriptors
) -> AcrDescriptors:
    """The descriptors a reader reports: the truth, less missed foci and over-called margins."""
    foci = set(truth.foci)
    if EchogenicFocus.PUNCTATE in foci and rng.random() < style.p_miss_punctate:
        foci.discard(EchogenicFocus.PUNCTATE)
    margin = truth.margin
    if margin in (Margin.SMOOTH, Margin.ILL_DEFINED) and rng.random() < style.p_overcall_margin:
        margin = Margin.LOBULATED_IRREGULAR
    return AcrDescriptors(
        truth.composition, truth.echogenicity, truth.shape, margin, frozenset(foci)
    )


def reader_level(rng: np.random.Generator, style: ReaderStyle, descriptors: AcrDescriptors) -> str:
    """The level a reader assigns: that of its descriptors, one step off with ``p_adjacent``."""
    index = ACR_LEVELS.index(acr_level_of(descriptors))
    if rng.random() < style.p_adjacent:
        step = 1 if rng.random() < 0.5 else -1
        if not 0 <= index + step < len(ACR_LEVELS):
            step = -step  # at TR1 or TR5 the only adjacent level is inward
        index += step
    return ACR_LEVELS[index]


def reader_mask(
    rng: np.random.Generator,
    style: ReaderStyle,
    geometry: NoduleGeometry,
    spacing_mm: tuple[float, float],
    shape: tuple[int, int],
) -> np.ndarray:
    """Rasterises the polygon a reader would draw around the nodule.

    Vertices sit at equal angles on the (partly smoothed) true outline, offset radially by the
    reader's dilation and jitter in millimetres, and the polygon is filled as drawn.
    """
    angles = np.linspace(-np.pi, np.pi, style.vertices, endpoint=False)
    angles = angles + rng.uniform(0, 2 * np.pi / style.vertices)
    outline = geometry.smoothed(1.0 - style.smoothing)
    radius = outline.radius(angles)
    a, b = geometry.semi_axes_mm
    x_mm = a * radius * np.cos(angles)
    y_mm = b * radius * np.sin(angles)
    distance = np.hypot(x_mm, y_mm)
    offset = (
        style.dilation_mm
        + rng.normal(0.0, style.dilation_jitter_mm)
        + rng.normal(0.0, style.vertex_jitter_mm, size=angles.size)
    )
    scale = np.clip(1.0 + offset / distance, 0.2, None)
    cx, cy = geometry.center_mm
    cols = (cx + x_mm * scale) / spacing_mm[0]
    rows = (cy + y_mm * scale) / spacing_mm[1]
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(list(zip(cols.tolist(), rows.tolist(), strict=True)), fill=1)
    return np.asarray(canvas, dtype=bool)


def annotate(
    rng: np.random.Generator,
    styles: Sequence[ReaderStyle],
    truth: AcrDescriptors,
    true_mask: np.ndarray,
    geometry: NoduleGeometry,
    spacing_mm: tuple[float, float],
) -> list[ReaderAnnotation]:
    """Every reader's mask, descriptors and level for one image."""
    annotations = []
    for style in styles:
        if style.exact:
            annotations.append(
                ReaderAnnotation(style.name, true_mask.copy(), truth, acr_level_of(truth))
            )
            continue
        descriptors = reader_descriptors(rng, style, truth)
        level = reader_level(rng, style, descriptors)
        mask = reader_mask(rng, style, geometry, spacing_mm, true_mask.shape)
        annotations.append(ReaderAnnotation(style.name, mask, descriptors, level))
    return annotations


def consensus_mask(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Pixel-wise majority: a pixel that at least half of the readers include."""
    votes = np.sum(np.stack(masks), axis=0, dtype=np.int32)
    return np.asarray(2 * votes >= len(masks))


def majority_level(levels: Sequence[str]) -> str:
    """Most frequent level; ties go to the higher (more suspicious) level."""
    counts = Counter(levels)
    best = max(counts.values())
    return max((level for level, n in counts.items() if n == best), key=ACR_LEVELS.index)
