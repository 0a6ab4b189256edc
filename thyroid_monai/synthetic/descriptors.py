"""Sampling of plausible ACR descriptor combinations with a chosen mix of TI-RADS levels.

Every combination of the five ACR categories that a radiologist could plausibly report is
enumerated once, with a prior weight built from per-category frequencies conditioned on the
composition (a cyst is anechoic and wider-than-tall; a spongiform nodule has no suspicious
features). Sampling then draws the level first, from the configured class mix, and a descriptor
combination second, from the prior restricted to that level. The true level is therefore exactly
``tirads.acr_level_of`` of the sampled descriptors, and the class mix is honoured exactly in
expectation.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from thyroid_monai.tirads import (
    ACR_LEVELS,
    AcrDescriptors,
    Composition,
    EchogenicFocus,
    Echogenicity,
    Margin,
    Shape,
    acr_level_of,
)

CLASS_MIX_PRESETS: Mapping[str, Mapping[str, float]] = {
    # Balanced classes: what a training set for a 5-class head wants.
    "uniform": {level: 1.0 for level in ACR_LEVELS},
    # Roughly the spread of nodules referred for ultrasound (mostly TR2-TR4).
    "clinical": {"TR1": 0.08, "TR2": 0.22, "TR3": 0.25, "TR4": 0.32, "TR5": 0.13},
}

# Per-category frequencies for solid-containing nodules. Cystic and spongiform nodules get their
# own, much narrower, tables below.
_SOLID_ECHO = {Echogenicity.HYPER_ISO: 0.35, Echogenicity.HYPO: 0.45, Echogenicity.VERY_HYPO: 0.2}
_MIXED_ECHO = {Echogenicity.HYPER_ISO: 0.55, Echogenicity.HYPO: 0.35, Echogenicity.VERY_HYPO: 0.1}
_SOLID_SHAPE = {Shape.WIDER_THAN_TALL: 0.75, Shape.TALLER_THAN_WIDE: 0.25}
_MIXED_SHAPE = {Shape.WIDER_THAN_TALL: 0.88, Shape.TALLER_THAN_WIDE: 0.12}
_SOLID_MARGIN = {
    Margin.SMOOTH: 0.4,
    Margin.ILL_DEFINED: 0.25,
    Margin.LOBULATED_IRREGULAR: 0.25,
    Margin.EXTRATHYROIDAL_EXTENSION: 0.1,
}
_MIXED_MARGIN = {
    Margin.SMOOTH: 0.5,
    Margin.ILL_DEFINED: 0.3,
    Margin.LOBULATED_IRREGULAR: 0.15,
    Margin.EXTRATHYROIDAL_EXTENSION: 0.05,
}
_M, _R, _P = (
    EchogenicFocus.MACROCALCIFICATION,
    EchogenicFocus.PERIPHERAL_RIM,
    EchogenicFocus.PUNCTATE,
)
_SOLID_FOCI: Mapping[frozenset[EchogenicFocus], float] = {
    frozenset(): 0.45,
    frozenset({_M}): 0.15,
    frozenset({_R}): 0.1,
    frozenset({_P}): 0.2,
    frozenset({_M, _P}): 0.05,
    frozenset({_R, _P}): 0.03,
    frozenset({_M, _R}): 0.02,
}
_MIXED_FOCI: Mapping[frozenset[EchogenicFocus], float] = {
    frozenset(): 0.6,
    frozenset({_M}): 0.15,
    frozenset({_R}): 0.08,
    frozenset({_P}): 0.15,
    frozenset({_M, _P}): 0.02,
}


@dataclass(frozen=True)
class DescriptorTable:
    """All plausible descriptor combinations with their level and prior weight."""

    combos: tuple[AcrDescriptors, ...]
    levels: tuple[str, ...]
    weights: np.ndarray

    def indices_of_level(self, level: str) -> np.ndarray:
        """Indices of the combinations whose true level is ``level``."""
        return np.flatnonzero(np.asarray(self.levels) == level)


def _solid_like(composition: Composition) -> list[tuple[AcrDescriptors, float]]:
    is_mixed = composition is Composition.MIXED
    echo = _MIXED_ECHO if is_mixed else _SOLID_ECHO
    shape = _MIXED_SHAPE if is_mixed else _SOLID_SHAPE
    margin = _MIXED_MARGIN if is_mixed else _SOLID_MARGIN
    foci = _MIXED_FOCI if is_mixed else _SOLID_FOCI
    rows = []
    for (e, we), (s, ws), (m, wm), (f, wf) in itertools.product(
        echo.items(), shape.items(), margin.items(), foci.items()
    ):
        rows.append((AcrDescriptors(composition, e, s, m, f), we * ws * wm * wf))
    return rows


@lru_cache(maxsize=4)
def descriptor_table(one_point_level: str = "TR1") -> DescriptorTable:
    """Enumerates the plausible combinations once (about 400 of them).

    Args:
        one_point_level: How a 1-point total is levelled (see :func:`tirads.acr_level`).

    Returns:
        The table of combinations, levels and prior weights.
    """
    rows: list[tuple[AcrDescriptors, float]] = []
    cyst = (Composition.CYSTIC, Echogenicity.ANECHOIC, Shape.WIDER_THAN_TALL)
    rows += [
        (AcrDescriptors(*cyst, Margin.SMOOTH), 0.75),
        (AcrDescriptors(*cyst, Margin.ILL_DEFINED), 0.2),
        # An almost completely cystic nodule with a calcified wall fleck: the 1-point case.
        (AcrDescriptors(*cyst, Margin.SMOOTH, frozenset({_M})), 0.05),
    ]
    rows.append(
        (
            AcrDescriptors(
                Composition.SPONGIFORM, Echogenicity.HYPER_ISO, Shape.WIDER_THAN_TALL, Margin.SMOOTH
            ),
            1.0,
        )
    )
    rows += _solid_like(Composition.MIXED)
    rows += _solid_like(Composition.SOLID)
    combos = tuple(r[0] for r in rows)
    levels = tuple(acr_level_of(c, one_point_level=one_point_level) for c in combos)  # type: ignore[arg-type]
    weights = np.asarray([r[1] for r in rows], dtype=np.float64)
    return DescriptorTable(combos, levels, weights)


def resolve_class_mix(class_mix: str | Mapping[str, float]) -> dict[str, float]:
    """Turns a preset name or a level-to-weight mapping into normalised level probabilities.

    Raises:
        ValueError: For an unknown preset, an unknown level, a negative weight or all zeros.
    """
    if isinstance(class_mix, str):
        if class_mix not in CLASS_MIX_PRESETS:
            raise ValueError(
                f"unknown class mix {class_mix!r}; presets: {', '.join(CLASS_MIX_PRESETS)}"
            )
        class_mix = CLASS_MIX_PRESETS[class_mix]
    unknown = set(class_mix) - set(ACR_LEVELS)
    if unknown:
        raise ValueError(f"class mix names unknown levels {sorted(unknown)}; use {ACR_LEVELS}")
    weights = {level: float(class_mix.get(level, 0.0)) for level in ACR_LEVELS}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"class mix weights must be non-negative and not all zero: {weights}")
    total = sum(weights.values())
    return {level: w / total for level, w in weights.items()}


def sample_descriptors(
    rng: np.random.Generator, level_probabilities: Mapping[str, float], table: DescriptorTable
) -> AcrDescriptors:
    """Draws a level from the mix, then a plausible descriptor combination of that level."""
    levels = list(level_probabilities)
    probabilities = np.asarray([level_probabilities[level] for level in levels])
    level = levels[int(rng.choice(len(levels), p=probabilities))]
    candidates = table.indices_of_level(level)
    weights = table.weights[candidates]
    return table.combos[int(candidates[rng.choice(len(candidates), p=weights / weights.sum())])]
