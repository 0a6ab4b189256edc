"""The five ACR descriptor categories as classification tasks of the structured-report heads.

Four categories choose one value each (composition, echogenicity, shape, margin): one softmax
head per category. Echogenic foci are "choose all that apply": one sigmoid per focus type
(multi-label). The class vocabularies are the members of the enums in :mod:`thyroid_monai.tirads`,
in their declaration order, so a class index always means the same descriptor value.

Task names are stable (``desc_composition``, ``desc_echogenicity``, ``desc_shape``,
``desc_margin``, ``desc_foci``): the network outputs, the loss dictionary, the batch keys of the
targets and the per-task parameters all use them.

Labels may be partial (DDTI describes only some categories): a missing category is encoded as
``-1`` (categorical) or ``NaN`` (foci), and the losses and scores skip it. A present but unknown
value is an error that names it.

The level can be read from predicted descriptors as ACR does: points per category, their sum, the
level of the sum (:func:`level_from_descriptor_indices`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

import numpy as np

from thyroid_monai.tirads import (
    AcrDescriptors,
    Composition,
    EchogenicFocus,
    Echogenicity,
    Margin,
    Shape,
    UnknownLabelError,
    acr_level_of,
)

CATEGORICAL: Final[Mapping[str, type[StrEnum]]] = {
    "composition": Composition,
    "echogenicity": Echogenicity,
    "shape": Shape,
    "margin": Margin,
}
"""Categories with exactly one value per nodule, and the enum that lists their classes."""

FOCI: Final = "foci"
"""The multi-label category: every echogenic-focus type present."""

CATEGORIES: Final[tuple[str, ...]] = (*CATEGORICAL, FOCI)
TASK_PREFIX: Final = "desc_"
MISSING_INDEX: Final = -1
"""Class index of a categorical descriptor that the label does not give."""


def task_name(category: str) -> str:
    """``"composition"`` -> ``"desc_composition"``."""
    if category not in CATEGORIES:
        raise UnknownLabelError(f"unknown ACR category {category!r}; expected one of {CATEGORIES}")
    return f"{TASK_PREFIX}{category}"


DESCRIPTOR_TASKS: Final[tuple[str, ...]] = tuple(task_name(c) for c in CATEGORIES)
FOCI_TASK: Final = task_name(FOCI)


def class_names(category: str) -> tuple[str, ...]:
    """Class vocabulary of a category (focus types for ``foci``)."""
    if category == FOCI:
        return tuple(member.value for member in EchogenicFocus)
    if category not in CATEGORICAL:
        raise UnknownLabelError(f"unknown ACR category {category!r}; expected one of {CATEGORIES}")
    return tuple(member.value for member in CATEGORICAL[category])


def num_outputs(category: str) -> int:
    """Logits of a category's head: one per class, or one per focus type."""
    return len(class_names(category))


def encode_descriptors(descriptors: Mapping[str, object] | None) -> dict[str, np.ndarray]:
    """Turns one (possibly partial) descriptor dictionary into per-task targets.

    Args:
        descriptors: ``{"composition": "solid", ..., "foci": ["punctate"]}`` as in datalists; a
            missing category (or ``None`` as its value) is unknown. ``"foci": []`` means no
            echogenic foci, which is known. ``None`` for the whole dictionary: nothing known.

    Returns:
        ``{task: target}``: an ``int64`` scalar class index (``-1`` when unknown) per categorical
        task, and a ``float32`` vector of 0/1 per focus type (``NaN`` when unknown) for foci.

    Raises:
        UnknownLabelError: For a value that is not in the category's vocabulary (the message
            names the category and the value).
    """
    values = descriptors or {}
    targets: dict[str, np.ndarray] = {}
    for category in CATEGORICAL:
        value = values.get(category)
        index = MISSING_INDEX
        if value is not None:
            names = class_names(category)
            text = str(value).strip().lower()
            if text not in names:
                raise UnknownLabelError(
                    f"unknown {category} value {value!r}; expected one of: {', '.join(names)}"
                )
            index = names.index(text)
        targets[task_name(category)] = np.asarray(index, dtype=np.int64)
    foci = values.get(FOCI)
    focus_names = class_names(FOCI)
    if foci is None:
        targets[FOCI_TASK] = np.full(len(focus_names), np.nan, dtype=np.float32)
    else:
        if isinstance(foci, str) or not isinstance(foci, list | tuple | set | frozenset):
            raise UnknownLabelError(f"'foci' must be a list of focus names, got {foci!r}")
        present = np.zeros(len(focus_names), dtype=np.float32)
        for focus in foci:
            text = str(focus).strip().lower()
            if text not in focus_names:
                raise UnknownLabelError(
                    f"unknown echogenic focus {focus!r}; expected one of: {', '.join(focus_names)}"
                )
            present[focus_names.index(text)] = 1.0
        targets[FOCI_TASK] = present
    return targets


def descriptors_from_indices(
    indices: Mapping[str, int], foci_present: np.ndarray | list[bool]
) -> AcrDescriptors:
    """Builds ACR descriptors from one class index per categorical task and the present foci.

    Args:
        indices: ``{task: class index}`` for the four categorical tasks.
        foci_present: One boolean per focus type, in :func:`class_names` order of ``foci``.

    Returns:
        The descriptors, ready for :func:`thyroid_monai.tirads.acr_points`.
    """
    values: dict[str, object] = {
        category: class_names(category)[int(indices[task_name(category)])]
        for category in CATEGORICAL
    }
    focus_names = class_names(FOCI)
    values[FOCI] = [name for name, on in zip(focus_names, foci_present, strict=True) if on]
    return AcrDescriptors.from_dict(values)


def level_from_descriptor_indices(
    indices: Mapping[str, int], foci_present: np.ndarray | list[bool]
) -> str:
    """ACR level (``"TR1"``..``"TR5"``) of predicted descriptors: points, sum, level."""
    return acr_level_of(descriptors_from_indices(indices, foci_present))
