"""Targets the datalist stores as names or lists, turned into tensors the losses and metrics read.

* :class:`DescriptorsToIndicesd`: ACR descriptor dictionaries -> one target per descriptor task;
* :class:`RadiomicsTargetd`: the radiomics vector (``null`` entries -> ``NaN``);
* :class:`PixelSpacingd`: the pixel spacing of the image as the network sees it (after resizing),
  ``NaN`` when the datalist says it is unknown.

Each writes a value for every item, known or not, so that items always collate into batches;
unknown values are ``-1``/``NaN`` and are skipped by the losses and the scores.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from thyroid_monai import descriptor_tasks, keys
from thyroid_monai.data import load_datalist
from thyroid_monai.tirads import UnknownLabelError
from thyroid_monai.transforms.readers import READER_SUFFIX


def _case(sample: Mapping[Hashable, Any]) -> object:
    return sample.get(keys.CASE_ID, sample.get(keys.IMAGE, "?"))


class DescriptorsToIndicesd(MapTransform):
    """Writes the descriptor-task targets of an item from its descriptor dictionaries.

    From ``descriptors`` (one dictionary) it writes ``desc_<category>``: an ``int64`` class index
    (``-1`` unknown) or, for foci, a ``float32`` 0/1 vector per focus type (``NaN`` unknown). An
    absent or ``null`` dictionary gives all-unknown targets, so items without descriptors still
    collate with items that have them. From ``descriptors_readers`` (one dictionary per reader),
    when present, it writes ``desc_<category>_readers`` stacked over readers. See
    :mod:`thyroid_monai.descriptor_tasks`.

    Args:
        descriptors_key: Key of the item's descriptor dictionary.
        readers_key: Key of the per-reader dictionaries (``None``: ignore readers).
        drop_sources: Remove the dictionaries afterwards (their lists of foci have varying
            lengths and would not collate into a batch).

    Raises:
        UnknownLabelError: For a descriptor value outside the ACR vocabulary (names the sample).
    """

    def __init__(
        self,
        descriptors_key: str = keys.DESCRIPTORS,
        readers_key: str | None = keys.DESCRIPTORS_READERS,
        drop_sources: bool = True,
    ):
        watched = [descriptors_key] + ([readers_key] if readers_key else [])
        super().__init__(watched, allow_missing_keys=True)
        self.descriptors_key = descriptors_key
        self.readers_key = readers_key
        self.drop_sources = drop_sources

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Returns a copy of ``data`` with the descriptor targets added."""
        sample = dict(data)
        key = self.descriptors_key
        try:
            encoded = descriptor_tasks.encode_descriptors(self._dictionary(sample.get(key)))
            sample.update({task: torch.as_tensor(value) for task, value in encoded.items()})
            key = self.readers_key or key
            readers = sample.get(key) if self.readers_key else None
            if readers is not None:
                sample.update(self._stacked(readers))
        except UnknownLabelError as error:
            raise UnknownLabelError(f"sample {_case(sample)}, key '{key}': {error}") from None
        if self.drop_sources:
            for source in self.keys:
                sample.pop(source, None)
        return sample

    @staticmethod
    def _dictionary(value: Any) -> Mapping[str, object] | None:
        if value is not None and not isinstance(value, Mapping):
            raise UnknownLabelError(f"expected a descriptor dictionary, got {value!r}")
        return value

    @staticmethod
    def _stacked(readers: Any) -> dict[str, torch.Tensor]:
        if not isinstance(readers, list | tuple) or not readers:
            raise UnknownLabelError(f"expected a non-empty list of dictionaries, got {readers!r}")
        per_reader = [
            descriptor_tasks.encode_descriptors(DescriptorsToIndicesd._dictionary(item))
            for item in readers
        ]
        return {
            task + READER_SUFFIX: torch.as_tensor(np.stack([r[task] for r in per_reader]))
            for task in descriptor_tasks.DESCRIPTOR_TASKS
        }


def radiomics_feature_names(datalist: str | Path) -> list[str]:
    """Names of the radiomics target features, from the datalist header.

    Raises:
        ValueError: If the header has no ``"radiomics": {"features": [...]}`` (names the file).
    """
    header = load_datalist(datalist).get(keys.RADIOMICS)
    features = header.get("features") if isinstance(header, Mapping) else None
    if not isinstance(features, list) or not features:
        raise ValueError(
            f"{datalist}: the header has no radiomics feature list ('radiomics': "
            "{'features': [...]}); compute the radiomics targets or disable the radiomics head"
        )
    return [str(name) for name in features]


def radiomics_feature_count(datalist: str | Path, enabled: bool = True) -> int:
    """Length of the radiomics target the datalist header declares; 0 when not ``enabled``.

    Raises:
        ValueError: If enabled and the header has no feature list (names the file).
    """
    return len(radiomics_feature_names(datalist)) if enabled else 0


class RadiomicsTargetd(MapTransform):
    """Turns the radiomics list of an item into a ``float32`` vector, ``NaN`` where missing.

    Args:
        keys: Keys holding radiomics vectors (``radiomics``).
        num_features: Expected length (from :func:`radiomics_feature_count`). An absent or
            ``null`` vector becomes all ``NaN``, so the item still trains its other tasks.

    Raises:
        ValueError: For a vector of the wrong length or with non-numeric entries (names the
            sample).
    """

    def __init__(self, keys: Sequence[str] | str = (keys.RADIOMICS,), num_features: int = 0):
        super().__init__(keys, allow_missing_keys=True)
        if num_features <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        self.num_features = num_features

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Returns a copy of ``data`` with every radiomics key as a tensor."""
        sample = dict(data)
        for key in self.keys:
            value = sample.get(key)
            if value is None:
                sample[key] = torch.full((self.num_features,), float("nan"))
                continue
            try:
                vector = np.asarray(
                    [np.nan if v is None else float(v) for v in value], dtype=np.float32
                )
            except (TypeError, ValueError):
                raise ValueError(
                    f"sample {_case(sample)}: '{key}' must be a list of numbers or nulls, "
                    f"got {value!r}"
                ) from None
            if vector.shape != (self.num_features,):
                raise ValueError(
                    f"sample {_case(sample)}: '{key}' has {vector.size} values, "
                    f"the datalist declares {self.num_features} features"
                )
            sample[key] = torch.as_tensor(vector)
        return sample


class PixelSpacingd(MapTransform):
    """Writes the spacing (mm, ``[x, y]``) of the image as loaded and resized, ``NaN`` if unknown.

    The datalist's ``spacing`` says whether the spacing is known at all (``null`` when not); the
    value is then read from the image's affine, which MONAI's spatial transforms keep up to date,
    so it is the spacing of the pixels the network sees.

    Args:
        keys: The spacing key(s) to rewrite.
        image_key: The (already resized) image whose affine gives the spacing.
    """

    def __init__(self, keys: Sequence[str] | str = (keys.SPACING,), image_key: str = keys.IMAGE):
        super().__init__(keys, allow_missing_keys=True)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Returns a copy of ``data`` with the spacing as a ``(2,)`` float tensor."""
        sample = dict(data)
        image = sample[self.image_key]
        for key in self.keys:
            if sample.get(key) is None:
                sample[key] = torch.full((2,), float("nan"))
                continue
            pixdim = getattr(image, "pixdim", None)
            if pixdim is None:
                raise ValueError(
                    f"sample {_case(sample)}: '{self.image_key}' carries no affine to read the "
                    "spacing from; load it with LoadImaged"
                )
            sample[key] = torch.as_tensor(pixdim[:2], dtype=torch.float32).clone()
        return sample


class MissingTargetsd(MapTransform):
    """Gives items without a mask or a level placeholders the losses and scores skip.

    Datalists mix items: a converted DDTI image whose contour is missing still has its level, a
    segmentation data set has masks and no levels. So that such items train the task they have
    and collate with the others, an absent mask becomes a ``NaN`` mask the size of the image
    (:func:`thyroid_monai.losses.known_masks`, the scores skip it too) and an absent level
    becomes class ``-1`` (the level
    loss and scores skip it). Run it after the level names are mapped to indices.

    Args:
        mask: The mask is trained: fill absent masks.
        level: The level is trained: fill absent levels.
        image_key, mask_key, level_key: Sample keys.

    Raises:
        ValueError: For an item with none of the trained targets, naming the item.
    """

    def __init__(
        self,
        mask: bool = True,
        level: bool = True,
        image_key: str = keys.IMAGE,
        mask_key: str = keys.LABEL,
        level_key: str = keys.TIRADS,
    ):
        super().__init__([mask_key, level_key], allow_missing_keys=True)
        self.mask, self.level = mask, level
        self.image_key, self.mask_key, self.level_key = image_key, mask_key, level_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with placeholders for the trained targets it lacks."""
        sample = dict(data)
        has_mask = sample.get(self.mask_key) is not None
        has_level = sample.get(self.level_key) is not None
        trained = [name for name, on in (("a mask", self.mask), ("a level", self.level)) if on]
        if trained and not ((self.mask and has_mask) or (self.level and has_level)):
            raise ValueError(
                f"datalist item {_case(sample)} has neither {' nor '.join(trained)}: nothing to "
                f"train on it; give it '{self.mask_key}' or '{self.level_key}', or remove it"
            )
        if self.mask and not has_mask:
            image = sample[self.image_key]
            sample[self.mask_key] = torch.full(
                (1, *image.shape[-2:]), float("nan"), dtype=torch.float32
            )
        if self.level and not has_level:
            sample[self.level_key] = torch.tensor(descriptor_tasks.MISSING_INDEX)
        return sample
