"""The random states a resumed training restores, as one checkpointable object.

:class:`RandomStates` holds Python's, NumPy's and torch's global generators and the generator of
every random transform of the pipelines; its state dict holds only tensors, numbers and lists, so
a checkpoint that contains it loads weights-only.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, Randomizable


def _randomizable(transforms: Any) -> list[Randomizable]:
    """Every ``Randomizable`` inside a transform, a ``Compose`` or a list of them, nested ones too.

    Dictionary transforms draw from the generators of the array transforms they wrap
    (``RandAffined`` -> ``RandAffine`` -> ``RandAffineGrid``), so those are found among the
    attributes of each random transform. The order is that of the pipeline and the attributes,
    the same in the run that saves and the run that resumes.
    """
    found: list[Randomizable] = []
    seen: set[int] = set()
    pending = list(transforms) if isinstance(transforms, Iterable) else [transforms]
    while pending:
        transform = pending.pop(0)
        if id(transform) in seen:
            continue
        seen.add(id(transform))
        nested: list[Any] = []
        if isinstance(transform, Compose):
            nested += list(transform.transforms)
        if isinstance(transform, Randomizable):
            found.append(transform)
            nested += [
                value
                for value in getattr(transform, "__dict__", {}).values()
                if isinstance(value, Randomizable)
            ]
        pending = nested + pending
    return found


class RandomStates:
    """The random states a resumed training needs, as a checkpointable object.

    Python's, NumPy's and torch's global generators (CUDA's too when present: dropout, data order,
    initialisation) and the generator of every random transform of the given pipelines
    (augmentation, reader sampling). ``state_dict`` holds only tensors, numbers and lists, so the
    checkpoint loads with ``torch.load(weights_only=True)``.

    Args:
        transforms: Transform pipelines (``Compose`` or lists) whose random transforms to track.
    """

    def __init__(self, transforms: Any = ()):
        self.transforms = _randomizable(transforms)

    def state_dict(self) -> dict[str, Any]:
        """The current states."""
        version, mt_state, gauss = random.getstate()
        numpy_state = np.random.get_state()  # noqa: NPY002 - the legacy global generator is used by libraries
        return {
            "python": [version, list(mt_state), gauss],
            "numpy": _numpy_state(numpy_state),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "transforms": [_numpy_state(t.R.get_state()) for t in self.transforms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores saved states.

        Raises:
            ValueError: If the checkpoint tracked a different number of random transforms.
        """
        version, mt_state, gauss = state["python"]
        random.setstate((version, tuple(int(x) for x in mt_state), gauss))
        np.random.set_state(_numpy_state_back(state["numpy"]))  # noqa: NPY002
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        saved = state["transforms"]
        if len(saved) != len(self.transforms):
            raise ValueError(
                f"the checkpoint holds {len(saved)} random transform states, the pipeline has "
                f"{len(self.transforms)}: resume with the same preprocessing"
            )
        for transform, transform_state in zip(self.transforms, saved, strict=True):
            transform.R.set_state(_numpy_state_back(transform_state))


def _numpy_state(state: Any) -> list:
    name, keys, position, has_gauss, cached = state
    return [name, torch.as_tensor(keys.astype(np.int64)), int(position), int(has_gauss), cached]


def _numpy_state_back(state: list) -> tuple:
    name, keys, position, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)


__all__ = ["RandomStates"]
