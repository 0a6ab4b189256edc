"""Turning TI-RADS level names into training class indices through a named label grouping."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from thyroid_monai.tirads import Scheme, UnknownLabelError, get_grouping

UNKNOWN_LEVEL = -1
"""Class index of a sample whose level is not known (``null`` in the datalist, e.g. a DDTI case
without a TI-RADS grade): the level loss and scores skip it, the mask still trains."""


class TiradsToIndex(Transform):
    """Maps a level name (or a list of them, one per reader) to class indices.

    A missing level (``None``) becomes :data:`UNKNOWN_LEVEL`; a name that is not a level of the
    scheme is an error.

    Args:
        grouping: Grouping name: ``acr5``, ``risk3``, ``binary`` (ACR) or ``kwak6``, ``binary``
            (Kwak).
        scheme: ``"acr"`` or ``"kwak"``: the scheme the level names belong to.

    Raises:
        UnknownLabelError: At construction for an unknown grouping; at call for a label that is
            not a level of the scheme.
    """

    def __init__(self, grouping: str = "acr5", scheme: Scheme = "acr"):
        self.grouping = get_grouping(grouping, scheme)

    def __call__(self, label: object) -> torch.Tensor:
        """Returns a ``long`` scalar, or a ``long`` vector for a list of labels."""
        if isinstance(label, torch.Tensor) and not label.is_floating_point():
            return label.long()  # already an index
        if isinstance(label, Sequence) and not isinstance(label, str):
            return torch.tensor([self._index(item) for item in label], dtype=torch.long)
        return torch.tensor(self._index(label), dtype=torch.long)

    def _index(self, label: object) -> int:
        return UNKNOWN_LEVEL if label is None else self.grouping.index(label)


class TiradsToIndexd(MapTransform):
    """Dictionary wrapper of :class:`TiradsToIndex`; an unknown label names its sample.

    Args:
        keys: Keys holding level names (``tirads``, ``tirads_readers``...).
        grouping: See :class:`TiradsToIndex`.
        scheme: See :class:`TiradsToIndex`.
        allow_missing_keys: Skip keys that a sample does not have.
    """

    def __init__(
        self,
        keys: KeysCollection,
        grouping: str = "acr5",
        scheme: Scheme = "acr",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.converter = TiradsToIndex(grouping, scheme)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Converts every selected key in a copy of ``data``."""
        sample = dict(data)
        for key in self.key_iterator(sample):
            try:
                sample[key] = self.converter(sample[key])
            except UnknownLabelError as error:
                case = sample.get("case_id", sample.get("image", "?"))
                raise UnknownLabelError(f"sample {case}, key '{key}': {error}") from None
        return sample
