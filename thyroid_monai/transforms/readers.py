"""Training on several readers: one reader per item each epoch, or soft labels from all of them.

A phantom (or multi-reader) datalist item carries, beside its consensus targets, one target per
reader: ``label_readers`` (one mask per reader, loaded as a ``(readers, x, y)`` stack),
``tirads_readers`` (one level index per reader), and optionally the descriptor targets of every
reader (``desc_<category>_readers``). Three ways to train on them (``reader_mode``):

* ``consensus``: the item's consensus targets (``label``, ``tirads``...), readers unused;
* ``sample``: :class:`RandReaderd` picks one reader per item each time the item is drawn, and
  every target (mask, level, descriptors) comes from that same reader;
* ``soft``: :class:`SoftReaderLabelsd` averages the readers: the mask becomes the share of readers
  who drew each pixel, the level and each descriptor a distribution over classes, the foci the
  share of readers who saw each focus type. A reader whose label is unknown (``-1``/``NaN``) is
  left out of that average.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, MapTransform, Randomizable, Transform

from thyroid_monai import descriptor_tasks, keys
from thyroid_monai.tasks import ReaderMode, TaskSet

READER_SUFFIX = "_readers"


def _case(sample: Mapping[Hashable, Any]) -> object:
    return sample.get(keys.CASE_ID, sample.get(keys.IMAGE, "?"))


def _reader_count(sample: Mapping[Hashable, Any], sources: list[str]) -> int:
    counts = {source: len(sample[source]) for source in sources}
    if len(set(counts.values())) != 1:
        raise ValueError(f"sample {_case(sample)}: reader counts differ between keys: {counts}")
    count = next(iter(counts.values()))
    if count == 0:
        raise ValueError(f"sample {_case(sample)}: no readers in {sources}")
    return count


class _ReaderTransform(MapTransform):
    """Shared checks of the reader transforms: target <- source pairs, missing sources."""

    def __init__(
        self,
        masks: Mapping[str, str],
        labels: Mapping[str, str],
        allow_missing_keys: bool,
        drop_sources: bool,
    ):
        super().__init__(list(masks) + list(labels), allow_missing_keys)
        self.masks = dict(masks)
        self.labels = dict(labels)
        self.drop_sources = drop_sources

    def _present_sources(self, sample: Mapping[Hashable, Any]) -> list[str]:
        sources = list(self.masks.values()) + list(self.labels.values())
        missing = [source for source in sources if source not in sample]
        if missing and not self.allow_missing_keys:
            raise KeyError(f"sample {_case(sample)} has no reader targets {missing}")
        return [source for source in sources if source in sample]

    def _drop(self, sample: dict[Hashable, Any], sources: list[str]) -> None:
        if self.drop_sources:
            for source in sources:
                sample.pop(source, None)


class RandReaderd(Randomizable, _ReaderTransform):
    """Replaces the targets of an item by those of one reader drawn at random at every call.

    The same reader gives every target of the item (its mask, its level, its descriptors).

    Args:
        masks: Target key <- source key of masks; the source is a ``(readers, x, y)`` stack and the
            target gets that reader's ``(1, x, y)`` slice.
        labels: Target key <- source key of labels with the reader on the first axis.
        allow_missing_keys: Keep the item's own target when a source is absent (for datasets where
            only some items have several readers); otherwise a missing source is an error.
        drop_sources: Remove the source keys afterwards (they are not needed for training).
    """

    def __init__(
        self,
        masks: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        allow_missing_keys: bool = False,
        drop_sources: bool = True,
    ):
        default_masks = {keys.LABEL: keys.LABEL_READERS}
        default_labels = {keys.TIRADS: keys.TIRADS_READERS}
        super().__init__(
            default_masks if masks is None else masks,
            default_labels if labels is None else labels,
            allow_missing_keys,
            drop_sources,
        )
        self.reader = 0

    def randomize(self, data: int) -> None:
        """Draws the reader among ``data`` readers."""
        self.reader = int(self.R.randint(data))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Returns a copy of ``data`` with the drawn reader's targets."""
        sample = dict(data)
        sources = self._present_sources(sample)
        if not sources:
            return sample
        self.randomize(_reader_count(sample, sources))
        r = self.reader
        for target, source in self.masks.items():
            if source in sample:
                sample[target] = sample[source][r : r + 1]
        for target, source in self.labels.items():
            if source in sample:
                sample[target] = sample[source][r]
        self._drop(sample, sources)
        return sample


class SoftReaderLabelsd(_ReaderTransform):
    """Replaces the targets of an item by the average over its readers (soft labels).

    Args:
        masks: Target key <- source key of mask stacks ``(readers, x, y)``; the target is the
            ``(1, x, y)`` share of readers who drew each pixel.
        labels: Target key <- source key of class indices per reader ``(readers,)``; the target is
            the ``(num_classes,)`` distribution of the readers' classes. Readers with index ``-1``
            are left out; if all are, the target is all ``NaN`` (unknown).
        num_classes: Classes of each key of ``labels``.
        multilabel: Target key <- source key of per-reader 0/1 vectors ``(readers, n)``; the
            target is the share of readers per entry, ignoring ``NaN``.
        allow_missing_keys: Keep the item's own target when a source is absent.
        drop_sources: Remove the source keys afterwards.
    """

    def __init__(
        self,
        masks: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        num_classes: Mapping[str, int] | None = None,
        multilabel: Mapping[str, str] | None = None,
        allow_missing_keys: bool = False,
        drop_sources: bool = True,
    ):
        labels = {keys.TIRADS: keys.TIRADS_READERS} if labels is None else labels
        super().__init__(
            {keys.LABEL: keys.LABEL_READERS} if masks is None else masks,
            {**labels, **(multilabel or {})},
            allow_missing_keys,
            drop_sources,
        )
        self.num_classes = dict(num_classes or {})
        self.multilabel = dict(multilabel or {})
        without_count = [t for t in labels if t not in self.num_classes]
        if without_count:
            raise ValueError(f"num_classes is missing for the soft label keys {without_count}")

    def _distribution(self, indices: Any, num_classes: int) -> torch.Tensor:
        values = torch.as_tensor(indices).long().view(-1)
        valid = values[values >= 0]
        if valid.numel() == 0:
            return torch.full((num_classes,), float("nan"))
        return torch.bincount(valid, minlength=num_classes)[:num_classes].float() / valid.numel()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Returns a copy of ``data`` with soft targets."""
        sample = dict(data)
        sources = self._present_sources(sample)
        for target, source in self.masks.items():
            if source in sample:
                sample[target] = torch.as_tensor(sample[source]).float().mean(dim=0, keepdim=True)
        for target, source in self.labels.items():
            if source not in sample:
                continue
            if target in self.multilabel:
                stack = np.asarray(sample[source], dtype=np.float32)
                known = ~np.isnan(stack)
                counts = known.sum(axis=0)
                total = np.where(known, stack, 0.0).sum(axis=0)
                share = np.divide(total, counts, out=np.full_like(total, np.nan), where=counts > 0)
                sample[target] = torch.as_tensor(share, dtype=torch.float32)
            else:
                sample[target] = self._distribution(sample[source], self.num_classes[target])
        self._drop(sample, sources)
        return sample


def reader_transform(mode: ReaderMode, tasks: TaskSet) -> Transform:
    """The reader step of the training pipeline, for the standard sample keys.

    Args:
        mode: ``consensus`` (nothing to do), ``sample`` or ``soft``.
        tasks: The learned tasks: the level's classes, and whether the descriptor targets
            (``desc_<category>``) come from the readers too (``desc_<category>_readers``,
            written by :class:`~thyroid_monai.transforms.DescriptorsToIndicesd`).

    Returns:
        A transform (an empty ``Compose`` for ``consensus``).
    """
    if mode == "consensus":
        return Compose([])
    masks = {keys.LABEL: keys.LABEL_READERS}
    labels = {keys.TIRADS: keys.TIRADS_READERS}
    counts = {keys.TIRADS: tasks.num_classes}
    multilabel: dict[str, str] = {}
    if tasks.descriptors:
        for category in descriptor_tasks.CATEGORIES:
            task = descriptor_tasks.task_name(category)
            if category == descriptor_tasks.FOCI:
                multilabel[task] = task + READER_SUFFIX
            else:
                labels[task] = task + READER_SUFFIX
                counts[task] = descriptor_tasks.num_outputs(category)
    if mode == "sample":
        return RandReaderd(masks=masks, labels={**labels, **multilabel})
    if mode == "soft":
        return SoftReaderLabelsd(
            masks=masks, labels=labels, num_classes=counts, multilabel=multilabel
        )
    raise ValueError(f"unknown reader_mode {mode!r}; use consensus, sample or soft")
