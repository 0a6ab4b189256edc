"""Nodule-focused pooling: what the level head reads, taken where the nodule is.

A level head on the global average of the deepest encoder map sees the nodule as a few cells
diluted by thyroid, muscle, vessels and the frame; the ACR descriptors live at the nodule and its
border: composition and echogenicity inside, echogenicity *relative to the thyroid* and the
margin at the border, shape in the outline, echogenic foci in a few bright pixels. So
:class:`NodulePooling` pools each chosen encoder map three ways: the mean inside the nodule
(weighted by the nodule probability), the mean in a ring around it, and the peak inside the
nodule (the largest probability-weighted value: a focus of a few pixels vanishes in a mean); and
it adds three numbers that describe the outline: its area, how much taller than wide it is and
how compact it is. The outline numbers are also handed to the heads directly (see
:class:`~thyroid_monai.networks.MultitaskUNet`), so that three inputs among thousands are not
lost in the embedding.

Choices the papers leave open (constructor options):

* **Weights.** The nodule probability (the mask head's softmax; the truth mask may stand in for
  it while training, see ``MultitaskTrainer(level_guide_epochs=...)``), averaged over each map's
  cells. The caller detaches it by default, so the level loss never pushes the mask.
* **Ring.** The probability dilated by ``ring_pixels`` input pixels (4: a sixteenth of the
  64-pixel input the defaults were measured at) minus the probability itself: a band of
  surrounding tissue, then averaged onto each map's grid. A width in pixels rather than a share
  of the image keeps a traced export exact for inputs of any size; scale it with the input
  (8 at 128 px) when training at another size.
* **Traceable.** No size of the input is turned into a Python number, so a traced export
  (``torch.jit.trace``) works on inputs of any size.
* **Empty mask.** Every map gets a uniform weight of total mass ``empty_weight`` (in cells)
  besides the nodule's. For a nodule of at least one cell this changes the mean by well under
  1%; when the predicted mask is empty the pooling becomes the plain global average (the
  documented fallback), smoothly, without a branch on the data. The outline numbers are 0 then.
* **Outline scale** (``outline_scale``, 8). The outline numbers are multiplied by it. Adam moves
  a weight by about the learning rate per step, so a head needs inputs of a few units to turn
  three numbers into a decision within a few hundred steps: measured with scale 1 (600 phantom
  images, 12 epochs), the shape head stayed at the majority class although the true masks'
  elongation separates the two shapes perfectly.
* **Axes.** Images follow MONAI's 2D convention ``(batch, channel, x, y)``: x lateral, y depth.
  "Taller than wide" is the depth extent over the lateral one, so the pixels must be square
  (resize the longest side and pad, as the bundle does, never stretch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

RING_PIXELS = 4
"""Default ring width in input pixels (a sixteenth of the 64-pixel input it was measured at)."""
SHAPE_FEATURES = 3
"""log area share, log(depth extent / lateral extent), compactness (1 for a disc)."""


def weighted_mean(
    features: torch.Tensor, weights: torch.Tensor, empty_weight: float
) -> torch.Tensor:
    """Per-sample, per-channel mean of ``features`` under ``weights`` (same spatial size).

    Args:
        features: ``(batch, channels, x, y)``.
        weights: ``(batch, 1, x, y)``, non-negative.
        empty_weight: Uniform mass (in cells) added to the weights, so that all-zero weights give
            the global average.

    Returns:
        ``(batch, channels)``.
    """
    cells = torch.ones_like(weights).sum(dim=(-2, -1), keepdim=True)  # a tensor: traceable
    weights = weights + empty_weight / cells
    total = weights.sum(dim=(-2, -1))
    return (features * weights).sum(dim=(-2, -1)) / total


def outline_features(probability: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Area, elongation and compactness of a soft mask, from its moments.

    Args:
        probability: ``(batch, 1, x, y)`` in [0, 1].
        eps: Guards the divisions; an empty mask gives zeros.

    Returns:
        ``(batch, 3)``: log of the area share (0 for an empty mask), ``log(sd_y / sd_x)``
        (positive when taller than wide in pixels) and ``perimeter^2 / (4 pi area)`` minus 1
        (0 for a disc, larger for lobulated or irregular outlines).
    """
    p = probability[:, 0]
    mass = p.sum(dim=(-2, -1))
    present = mass > 0.5  # at least half a pixel of nodule
    safe_mass = mass.clamp(min=eps)
    # pixel coordinates and count as tensors (traceable for any input size)
    ones = torch.ones_like(p)
    x = ones.cumsum(dim=-2) - 1.0
    y = ones.cumsum(dim=-1) - 1.0
    pixels = ones.sum(dim=(-2, -1))
    mean_x = (p * x).sum(dim=(-2, -1)) / safe_mass
    mean_y = (p * y).sum(dim=(-2, -1)) / safe_mass
    var_x = (p * (x - mean_x[:, None, None]) ** 2).sum(dim=(-2, -1)) / safe_mass
    var_y = (p * (y - mean_y[:, None, None]) ** 2).sum(dim=(-2, -1)) / safe_mass
    elongation = 0.5 * torch.log((var_y + 1.0) / (var_x + 1.0))  # +1 px^2: stable when tiny
    grad_x = p[:, 1:, :] - p[:, :-1, :]
    grad_y = p[:, :, 1:] - p[:, :, :-1]
    perimeter = grad_x.abs().sum(dim=(-2, -1)) + grad_y.abs().sum(dim=(-2, -1))
    # The L1 perimeter of a disc is 4/pi times its Euclidean one, hence pi/4 below.
    compactness = (math.pi / 4 * perimeter) ** 2 / (4 * math.pi * safe_mass) - 1.0
    area = torch.log(safe_mass / pixels)
    features = torch.stack([area, elongation, compactness], dim=1)
    return torch.where(present[:, None], features, torch.zeros_like(features))


class NodulePooling(nn.Module):
    """Pools encoder maps inside the nodule and in a ring around it, plus the outline.

    Args:
        channels: Channels of every encoder map, shallow to deep.
        scales: Indices (into ``channels``) of the maps to pool; default: all.
        ring_pixels: Ring width in input pixels.
        empty_weight: Uniform mass that makes an empty mask pool the whole map (see above).
        outline_scale: Factor on the outline numbers (see above).

    Raises:
        ValueError: For a scale index outside the maps or a negative width or weight.
    """

    def __init__(
        self,
        channels: Sequence[int],
        scales: Sequence[int] | None = None,
        ring_pixels: int = RING_PIXELS,
        empty_weight: float = 0.01,
        outline_scale: float = 8.0,
    ):
        super().__init__()
        chosen = tuple(range(len(channels))) if scales is None else tuple(scales)
        bad = [s for s in chosen if not 0 <= s < len(channels)]
        if bad or not chosen:
            raise ValueError(f"pooling scales {bad or chosen} not in 0..{len(channels) - 1}")
        if ring_pixels < 1 or empty_weight <= 0:
            raise ValueError(
                f"ring_pixels must be >= 1 and empty_weight > 0, got {ring_pixels}, {empty_weight}"
            )
        self.scales = chosen
        self.ring_pixels = int(ring_pixels)
        self.empty_weight = float(empty_weight)
        self.outline_scale = float(outline_scale)
        self.out_features = 3 * sum(channels[s] for s in chosen) + SHAPE_FEATURES

    def ring(self, probability: torch.Tensor) -> torch.Tensor:
        """The band of tissue around the nodule: dilated probability minus the probability."""
        width = self.ring_pixels
        dilated = F.max_pool2d(probability, kernel_size=2 * width + 1, stride=1, padding=width)
        return (dilated - probability).clamp(min=0.0)

    def forward(self, features: Sequence[torch.Tensor], probability: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(batch, out_features)``.

        In order: the means inside the nodule, the means in the ring, the peaks inside (each over
        the chosen maps, shallow to deep), then the outline (the last three).

        Args:
            features: Encoder maps, shallow to deep, each ``(batch, channels, x, y)``.
            probability: Nodule probability ``(batch, 1, X, Y)`` at the input resolution.
        """
        ring = self.ring(probability)
        inside, around, peaks = [], [], []
        for index in self.scales:
            feature = features[index]
            # the map's own size, not Python ints, so that a trace follows the input's size
            size = feature.shape[-2:]
            weights = F.adaptive_avg_pool2d(probability, size)  # type: ignore[arg-type]
            band = F.adaptive_avg_pool2d(ring, size)  # type: ignore[arg-type]
            inside.append(weighted_mean(feature, weights, self.empty_weight))
            around.append(weighted_mean(feature, band, self.empty_weight))
            peaks.append((feature * weights).amax(dim=(-2, -1)))
        outline = self.outline_scale * outline_features(probability)
        return torch.cat([*inside, *around, *peaks, outline], dim=1)
