"""Resizing that keeps the aspect ratio: one scale factor, then symmetric zero padding.

Stretching a 560x360 frame to a square makes a wider-than-tall nodule look taller than wide, an
ACR shape feature worth 3 points. :class:`ResizeToFit` scales the image by one factor so that it
fits inside ``spatial_size`` and pads the rest with zeros (centred), in training, evaluation and
inference alike; :func:`fit_geometry` gives the numbers, so a prediction can be cropped and
resized back to the input's grid (:func:`undo_fit`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize, SpatialPad, Transform
from monai.utils import ensure_tuple_rep


@dataclass(frozen=True)
class FitGeometry:
    """How an image of ``source`` size sits in the network input of ``target`` size.

    Attributes:
        source: Input spatial size ``(x, y)``.
        target: Network input size ``(x, y)``.
        scaled: Size after the one-factor resize (each at most the target's).
        offset: Padding before the scaled image on each axis (the rest goes after it).
    """

    source: tuple[int, int]
    target: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]


def fit_geometry(source: Sequence[int], target: Sequence[int]) -> FitGeometry:
    """The one-factor resize and centred padding of ``source`` into ``target``.

    Raises:
        ValueError: For a size that is not two positive integers.
    """
    src, tgt = tuple(int(v) for v in source), tuple(int(v) for v in target)
    if len(src) != 2 or len(tgt) != 2 or min(src + tgt) <= 0:
        raise ValueError(f"need two positive sizes, got source {source} and target {target}")
    factor = min(t / s for s, t in zip(src, tgt, strict=True))
    scaled = tuple(max(1, min(t, round(s * factor))) for s, t in zip(src, tgt, strict=True))
    offset = tuple((t - s) // 2 for s, t in zip(scaled, tgt, strict=True))
    return FitGeometry(src, tgt, (scaled[0], scaled[1]), (offset[0], offset[1]))


class ResizeToFit(Transform):
    """Resizes a ``(channels, x, y)`` image by one factor to fit ``spatial_size``, then pads.

    MONAI's ``Resize`` and ``SpatialPad`` do the work, so a ``MetaTensor`` keeps its affine (and
    the pixel spacing read from it) up to date.

    Args:
        spatial_size: Network input size ``(x, y)``.
        mode: Interpolation (``"area"`` for images, ``"nearest"`` for masks).
    """

    def __init__(self, spatial_size: Sequence[int], mode: str = "area"):
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.mode = mode
        self._pad = SpatialPad(self.spatial_size, method="symmetric")

    def __call__(self, image: Any) -> Any:
        """The resized and padded image."""
        geometry = fit_geometry(image.shape[-2:], self.spatial_size)
        resized = Resize(spatial_size=geometry.scaled, mode=self.mode)(image)
        return self._pad(resized)


class ResizeToFitd(MapTransform):
    """Dictionary wrapper of :class:`ResizeToFit`, one interpolation mode per key.

    Args:
        keys: Keys to resize.
        spatial_size: Network input size ``(x, y)``.
        mode: One mode, or one per key.
        allow_missing_keys: Skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        mode: Sequence[str] | str = "area",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        modes = ensure_tuple_rep(mode, len(self.keys))
        pairs = zip(self.keys, modes, strict=True)
        self.resizers = {key: ResizeToFit(spatial_size, m) for key, m in pairs}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with every key resized and padded."""
        sample = dict(data)
        for key in self.key_iterator(sample):
            sample[key] = self.resizers[key](sample[key])
        return sample


def undo_fit(maps: torch.Tensor, source: Sequence[int]) -> torch.Tensor:
    """Crops the padding off network-grid maps and resizes them back to ``source``.

    Args:
        maps: ``(batch, channels, x, y)`` on the network's grid.
        source: The input's spatial size ``(x, y)``.

    Returns:
        ``(batch, channels, *source)``, bilinear.
    """
    geometry = fit_geometry(source, maps.shape[-2:])
    (ox, oy), (sx, sy) = geometry.offset, geometry.scaled
    cropped = maps[..., ox : ox + sx, oy : oy + sy]
    return F.interpolate(cropped, size=geometry.source, mode="bilinear", align_corners=False)
