"""One network for the nodule mask, the TI-RADS level and the structured report, on FlexibleUNet.

The encoder is shared. The segmentation decoder reads every encoder scale (U-Net skips). What
the classification heads read depends on ``level_pooling``:

* ``"nodule"`` (the bundle's default through ``"auto"`` when the mask is trained): every encoder
  map pooled inside the predicted nodule and in a ring around it, plus the outline's area,
  elongation and compactness (:class:`~thyroid_monai.networks.pooling.NodulePooling`);
* ``"global"``: the global average of the deepest encoder map ``z`` (the only choice without a
  mask head, and the layout of models trained before the option existed).

    pooled -> MLP -> embedding e -> level head -> level logits
                     e[:, :k] -> linear -> radiomics prediction (optional)
                     e -> one linear head per ACR category (optional)

The shared latent (``latent``, RLAR's probe point) stays the deepest encoder map ``z`` either way:
both the mask decoder and the level depend on it (with nodule pooling the level reads ``z``
weighted by the nodule probability), and each sample's outputs depend only on its own ``z``.

Only the first ``k`` embedding dimensions are tied to the radiomics target, so the rest of ``e``
stays free for complementary deep features (RLAR, Salama et al. 2026). The network returns a
dictionary keyed by task (``seg``, ``cls``, ``rad``, ``desc_<category>``) plus ``latent``, and
says which parameters the tasks share.

Choices the papers leave open, all constructor options:

* **Decoder normalisation** (``decoder_norm``). FlexibleUNet's default, BatchNorm, mixes the
  samples of a batch in training mode, so the gradient of one sample's mask loss with respect to
  the latent would depend on the other samples. RLAR compares per-sample latent gradients, so the
  default here is ``"group"`` (GroupNorm, 8 groups: per-sample statistics). On a phantom check
  (96 px, 10 epochs) it matched BatchNorm in Dice and speed; ``"instance"`` was slightly better
  but 1.7 times slower to train and made RLAR's double backward the most expensive; ``"none"``
  did not learn the mask. ``"batch"`` stays available for models trained without RLAR. The
  classification heads have no normalisation layer.
* **Level head** (``level_head``): ``"linear"`` (softmax logits) or an ordinal head
  (``"coral"``, ``"cumulative_link"``, see :mod:`thyroid_monai.networks.heads`) whose ``cls``
  output is class log-probabilities, with the cumulative logits under ``cls_ordinal``.
* **Level route** (``level_from``). ``"direct"``: a level head on the embedding.
  ``"acr_points"``: the level distribution is computed from the descriptor heads by the ACR chart
  (:class:`~thyroid_monai.networks.acr_route.AcrPointsLevel`: exact distribution of the point
  total, categories independent given the image), so the level loss trains the descriptor heads
  through the chart. ``"both"``: both routes; ``cls`` is their mixture (the mean of the two
  distributions), ``cls_direct`` and ``cls_acr`` are kept for the loss (each route is trained,
  plus a consistency term) and for the scores (how often the two agree). The ACR routes need the
  descriptor heads and an ACR label grouping; the descriptor heads then serve two tasks and are
  shared parameters.
* **Nodule pooling weights** (``pool_gradient``). The nodule probability that weights the
  pooling is detached by default: the level loss does not reshape the mask (the mask learns from
  its own loss). The truth mask may replace it during training (``guide`` in :meth:`forward`).
* **Shared parameters.** The encoder always; the embedding MLP too when two or more tasks read it
  (level, radiomics, descriptors), otherwise it belongs to its only reader. So every parameter is
  either shared or belongs to exactly one task, and a task's own parameters receive gradient from
  that task alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from thyroid_monai import descriptor_tasks, keys
from thyroid_monai.networks.acr_route import AcrPointsLevel
from thyroid_monai.networks.heads import OrdinalHead, ordinal_log_probabilities
from thyroid_monai.networks.pooling import RING_PIXELS, SHAPE_FEATURES, NodulePooling
from thyroid_monai.tasks import LevelFrom, TaskSet, check_level_route

DecoderNorm = Literal["instance", "group", "batch", "none"]
LevelHead = Literal["linear", "coral", "cumulative_link"]
LevelPooling = Literal["auto", "nodule", "global"]


class HeadInput(nn.Module):
    """ReLU on the embedding, the outline numbers (the last ``outline`` inputs) as they are.

    The outline's elongation is signed (taller or wider than wide), so no ReLU on it.
    """

    def __init__(self, outline: int):
        super().__init__()
        self.outline = outline

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[relu(embedding), outline]``."""
        split = inputs.shape[1] - self.outline
        return torch.cat([torch.relu(inputs[:, :split]), inputs[:, split:]], dim=1)


def _decoder_norm_layer(norm: str, channels: Sequence[int], groups: int) -> str | tuple | None:
    """FlexibleUNet's ``norm`` argument for a decoder normalisation name."""
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "batch":
        return ("batch", {"eps": 1e-3, "momentum": 0.1})  # FlexibleUNet's default
    if norm == "group":
        uneven = [c for c in channels if c % groups]
        if uneven:
            raise ValueError(f"decoder channels {uneven} are not divisible by {groups} groups")
        return ("group", {"num_groups": groups})
    if norm == "none":
        return None
    raise ValueError(f"unknown decoder_norm {norm!r}; use instance, group, batch or none")


def _check_options(
    *,
    num_classes: int,
    seg_classes: int,
    backbone: str,
    embedding_dim: int,
    radiomics_dim: int,
    radiomics_slice: int,
    level_head: str,
    descriptor_heads: bool,
    level_pooling: str,
    level_from: str,
    space_to_depth: int,
) -> None:
    """Raises ``ValueError`` naming the first invalid :class:`MultitaskUNet` option."""
    if space_to_depth < 1:
        raise ValueError(f"space_to_depth must be >= 1, got {space_to_depth}")
    if backbone not in FLEXUNET_BACKBONE.register_dict:
        valid = ", ".join(sorted(FLEXUNET_BACKBONE.register_dict))
        raise ValueError(f"unknown backbone {backbone!r}; available: {valid}")
    if num_classes <= 0 and seg_classes <= 0 and not descriptor_heads:
        raise ValueError(
            "enable at least one task: num_classes > 0, seg_classes > 0 or descriptor_heads"
        )
    if radiomics_dim and not 0 < radiomics_slice <= embedding_dim:
        raise ValueError(
            f"radiomics_slice must be in 1..embedding_dim ({embedding_dim}), got {radiomics_slice}"
        )
    if level_head not in ("linear", "coral", "cumulative_link"):
        raise ValueError(f"unknown level_head {level_head!r}; use linear, coral or cumulative_link")
    if level_pooling not in ("auto", "nodule", "global"):
        raise ValueError(f"unknown level_pooling {level_pooling!r}; use auto, nodule or global")
    if level_pooling == "nodule" and seg_classes <= 0:
        raise ValueError(
            "level_pooling 'nodule' pools where the mask head finds the nodule, but this "
            "model has no mask head (seg_classes 0); use 'global' or 'auto'"
        )
    check_level_route(level_from, level=num_classes > 0, descriptors=descriptor_heads)


def _acr_level(level_from: str, num_classes: int, label_grouping: str) -> AcrPointsLevel | None:
    """The ACR route's points-to-level module, or None for the direct level (or no level)."""
    if level_from == "direct" or num_classes <= 0:
        return None
    acr_level = AcrPointsLevel(label_grouping)
    if acr_level.num_classes != num_classes:
        raise ValueError(
            f"label grouping {label_grouping!r} has {acr_level.num_classes} classes, "
            f"the level head {num_classes}"
        )
    return acr_level


def _flexible_unet(
    in_channels: int,
    seg_classes: int,
    backbone: str,
    decoder_channels: Sequence[int],
    decoder_norm: str,
    decoder_groups: int,
) -> FlexibleUNet:
    """The encoder-decoder; a level-only model (``seg_classes`` 0) keeps only the encoder."""
    norm = _decoder_norm_layer(decoder_norm, decoder_channels, decoder_groups)
    unet = FlexibleUNet(
        in_channels=in_channels,
        out_channels=max(seg_classes, 1),
        backbone=backbone,
        pretrained=False,
        decoder_channels=tuple(decoder_channels),
        spatial_dims=2,
        norm=norm,  # type: ignore[arg-type]  # None: no normalisation layer
        decoder_bias=norm is None,  # without normalisation the convolutions need a bias
    )
    if seg_classes <= 0:
        # No unused parameters (DDP, optimisers).
        del unet.decoder
        del unet.segmentation_head
    return unet


def _embedding_mlp(features: int, embedding_dim: int, dropout: float, *, pooled: bool) -> nn.Module:
    """The embedding ``e``: pool, flatten, linear, ReLU, dropout, linear.

    Nodule pooling hands over a vector already (``pooled``); the layer indices stay those of
    global pooling so that checkpoints of either kind keep their parameter names.
    """
    return nn.Sequential(
        nn.Identity() if pooled else nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(features, embedding_dim),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(embedding_dim, embedding_dim),
    )


class MultitaskUNet(nn.Module):
    """FlexibleUNet with level, radiomics and descriptor heads on the deepest encoder features.

    Args:
        num_classes: TI-RADS classes of the chosen label grouping (0 disables the level head).
        seg_classes: Segmentation output channels (2: background and nodule; 0 disables the
            decoder, a level-only model).
        in_channels: Image channels.
        backbone: Any FlexibleUNet backbone (``resnet18``, ``resnet34``, ``efficientnet-b0``...).
        embedding_dim: Size of the classification embedding ``e``.
        radiomics_dim: Length of the radiomics target vector (0 disables the radiomics head).
        radiomics_slice: ``k``: how many leading dimensions of ``e`` predict the radiomics vector.
        dropout: Dropout inside the embedding MLP.
        decoder_channels: FlexibleUNet decoder widths.
        decoder_norm: ``"group"`` (default), ``"instance"``, ``"batch"`` or ``"none"``.
        decoder_groups: Groups of ``decoder_norm="group"``.
        level_head: ``"linear"``, ``"coral"`` or ``"cumulative_link"``.
        descriptor_heads: Add the five ACR descriptor heads (structured report).
        expose_encoder_maps: Also return every encoder map under ``encoder_maps`` (for
            regularisers that work on all scales).
        level_pooling: ``"nodule"``, ``"global"`` or ``"auto"`` (nodule when the mask head
            exists, else global); see the module docstring.
        pooling_scales: Encoder maps (indices, shallow to deep) that nodule pooling reads;
            None: all.
        pool_gradient: Let the level loss reach the mask through the pooling weights.
        level_from: ``"direct"``, ``"acr_points"`` or ``"both"`` (see the module docstring).
        label_grouping: ACR label grouping of the level classes (the ACR routes map levels to
            its classes).
        weights_path: Optional local state-dict file to initialise from (nothing is downloaded);
            a file holding ``{"model": state_dict}`` (a training checkpoint) works too.
        space_to_depth: ``f`` > 1 folds each ``f x f`` block of input pixels into channels
            (``pixel_unshuffle``) before the encoder and upsamples the mask logits by ``f``
            (bilinear) after the segmentation head: the encoder and decoder run at ``1/f`` of
            the input's side, at about the cost of an ``f`` times smaller input, yet see every
            input pixel at full contrast: a downsampled input averages a sub-millimetre
            echogenic focus with its neighbours, folded it stays one bright value in one
            channel. The mask is predicted at the input resolution; the ring of nodule pooling
            is ``4 f`` input pixels wide (4 cells of the grid the encoder sees, as without
            folding). The input's sides must be multiples of ``32 f``. The papers are silent;
            1 (no folding) is the default. Measured (``docs/level.md``, 2400 phantom images):
            128 px folded by 2 scores as the 64-pixel input does, while a 128-pixel grid gains
            0.055 macro-F1: the level lacks cells per nodule, not pixel detail.

    Raises:
        ValueError: For an unknown backbone or option, no enabled task, or ``radiomics_slice``
            larger than the embedding.
    """

    def __init__(
        self,
        num_classes: int = 5,
        seg_classes: int = 2,
        in_channels: int = 1,
        backbone: str = "resnet18",
        embedding_dim: int = 128,
        radiomics_dim: int = 0,
        radiomics_slice: int = 16,
        dropout: float = 0.1,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_norm: DecoderNorm = "group",
        decoder_groups: int = 8,
        level_head: LevelHead = "linear",
        descriptor_heads: bool = False,
        expose_encoder_maps: bool = False,
        level_pooling: LevelPooling = "global",
        pooling_scales: Sequence[int] | None = None,
        pool_gradient: bool = False,
        level_from: LevelFrom = "direct",
        label_grouping: str = "acr5",
        weights_path: str | Path | None = None,
        space_to_depth: int = 1,
    ):
        super().__init__()
        _check_options(num_classes=num_classes, seg_classes=seg_classes, backbone=backbone,
                       embedding_dim=embedding_dim, radiomics_dim=radiomics_dim,
                       radiomics_slice=radiomics_slice, level_head=level_head,
                       descriptor_heads=descriptor_heads, level_pooling=level_pooling,
                       level_from=level_from, space_to_depth=space_to_depth)  # fmt: skip
        if level_pooling == "auto":
            level_pooling = "nodule" if seg_classes > 0 else "global"
        self.space_to_depth = int(space_to_depth)
        self.acr_level = _acr_level(level_from, num_classes, label_grouping)
        self.level_from = level_from
        self.level_pooling = level_pooling
        self.pool_gradient = pool_gradient
        self.num_classes = num_classes
        self.seg_classes = seg_classes
        self.radiomics_dim = radiomics_dim
        self.radiomics_slice = radiomics_slice
        self.decoder_norm = decoder_norm
        self.level_head = level_head
        self.expose_encoder_maps = expose_encoder_maps
        # What the network records as tracking params (the task set records the heads).
        self.architecture = dict(
            backbone=backbone, in_channels=in_channels, embedding_dim=embedding_dim,
            radiomics_slice=radiomics_slice, dropout=dropout,
            decoder_channels=list(decoder_channels), decoder_norm=decoder_norm,
            decoder_groups=decoder_groups, level_head=level_head,
            level_pooling=level_pooling, pool_gradient=pool_gradient,
            pooling_scales=None if pooling_scales is None else list(pooling_scales),
            space_to_depth=self.space_to_depth,
        )  # fmt: skip
        self.unet = _flexible_unet(
            in_channels * self.space_to_depth**2,
            seg_classes, backbone, decoder_channels, decoder_norm, decoder_groups,
        )  # fmt: skip
        encoder_channels = FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"]
        self.nodule_pooling: NodulePooling | None = None
        pooled_features, outline = encoder_channels[-1], 0
        if level_pooling == "nodule":
            self.nodule_pooling = NodulePooling(
                encoder_channels, pooling_scales, ring_pixels=RING_PIXELS * self.space_to_depth
            )
            pooled_features, outline = self.nodule_pooling.out_features, SHAPE_FEATURES
        self.embedding: nn.Module | None = None
        self.classifier: nn.Module | None = None
        self.radiomics_head: nn.Module | None = None
        self.descriptor_heads = nn.ModuleDict()
        if num_classes > 0 or radiomics_dim > 0 or descriptor_heads:
            self.embedding = _embedding_mlp(
                pooled_features, embedding_dim, dropout, pooled=self.nodule_pooling is not None
            )
        self._add_heads(embedding_dim, outline, descriptor_heads)
        if weights_path is not None:
            state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
            self.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)

    @classmethod
    def for_tasks(
        cls, tasks: TaskSet, level_pooling: LevelPooling = "auto", **architecture: Any
    ) -> MultitaskUNet:
        """The network of a task set: the tasks decide the heads, ``architecture`` the rest.

        Args:
            tasks: Which targets the model learns (:class:`~thyroid_monai.tasks.TaskSet`).
            level_pooling: ``"auto"`` here (the level reads the nodule when the mask is
                learned); the constructor's default, ``"global"``, is the layout of checkpoints
                written before the option existed.
            **architecture: Every other constructor argument (``backbone``, ``dropout``...).

        Raises:
            ValueError: If ``architecture`` repeats an argument the tasks decide.
        """
        decided = tasks.network_arguments()
        repeated = sorted(set(decided) & set(architecture))
        if repeated:
            raise ValueError(f"{repeated} follow from the task set; set them there, not here")
        return cls(**decided, level_pooling=level_pooling, **architecture)

    def tracking_params(self) -> dict[str, Any]:
        """What a tracked run records: the architecture (the task set records the heads)."""
        return dict(self.architecture)

    def _add_heads(self, embedding_dim: int, outline: int, descriptor_heads: bool) -> None:
        """The level, radiomics and descriptor heads on the embedding (and the outline)."""
        # Heads read ReLU(e), plus the outline numbers with nodule pooling (index 1 stays the
        # linear layer, as in checkpoints written before).
        activation: nn.Module = nn.ReLU() if outline == 0 else HeadInput(outline)
        head_inputs = embedding_dim + outline
        if self.num_classes > 0 and self.level_from != "acr_points":
            head: nn.Module = (
                nn.Linear(head_inputs, self.num_classes)
                if self.level_head == "linear"
                else OrdinalHead(head_inputs, self.num_classes, self.level_head)
            )
            self.classifier = nn.Sequential(copy.deepcopy(activation), head)
        if self.radiomics_dim > 0:
            self.radiomics_head = nn.Linear(self.radiomics_slice, self.radiomics_dim)
        if descriptor_heads:
            for category in descriptor_tasks.CATEGORIES:
                self.descriptor_heads[descriptor_tasks.task_name(category)] = nn.Sequential(
                    copy.deepcopy(activation),
                    nn.Linear(head_inputs, descriptor_tasks.num_outputs(category)),
                )

    @property
    def tasks(self) -> tuple[str, ...]:
        """The enabled tasks, in the order of the output dictionary."""
        tasks = []
        if self.seg_classes > 0:
            tasks.append(keys.SEG)
        if self.classifier is not None or self.acr_level is not None:
            tasks.append(keys.CLS)
        if self.radiomics_head is not None:
            tasks.append(keys.RAD)
        tasks.extend(self.descriptor_heads.keys())
        return tuple(tasks)

    @property
    def samples_independent_after_latent(self) -> bool:
        """Whether each sample's outputs depend only on its own latent in training mode.

        False only for a BatchNorm decoder, whose batch statistics mix the samples; regularisers
        built on per-sample latent gradients (RLAR) need True.
        """
        return self.seg_classes <= 0 or self.decoder_norm != "batch"

    def _embedding_readers(self) -> list[str]:
        return [task for task in self.tasks if task != keys.SEG]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters several tasks depend on: the encoder, and the embedding if it is shared."""
        shared = list(self.unet.encoder.parameters())
        if self.embedding is not None and len(self._embedding_readers()) > 1:
            shared.extend(self.embedding.parameters())
        if self.acr_level is not None:  # the level reads the descriptor heads too
            for head in self.descriptor_heads.values():
                shared.extend(head.parameters())
        return shared

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters that belong to exactly one task, per task (same names as the losses)."""
        params: dict[str, list[nn.Parameter]] = {}
        if self.seg_classes > 0:
            params[keys.SEG] = [
                *self.unet.decoder.parameters(),
                *self.unet.segmentation_head.parameters(),
            ]
        if self.classifier is not None or self.acr_level is not None:
            params[keys.CLS] = [] if self.classifier is None else list(self.classifier.parameters())
        if self.radiomics_head is not None:
            params[keys.RAD] = list(self.radiomics_head.parameters())
        for task, head in self.descriptor_heads.items():
            params[task] = [] if self.acr_level is not None else list(head.parameters())
        readers = self._embedding_readers()
        if self.embedding is not None and len(readers) == 1:
            params[readers[0]] = [*self.embedding.parameters(), *params[readers[0]]]
        return params

    def representation_module(self) -> nn.Module:
        """The shared encoder, whose output maps are the representation every head reads.

        Gradient methods that aggregate at the representation cut the graph at its outputs.
        """
        return self.unet.encoder

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps, shallow to deep (five for ResNets: the stem and four stages).

        With ``space_to_depth`` > 1 the encoder reads the folded image (see the class).
        """
        if self.space_to_depth > 1:
            image = F.pixel_unshuffle(image, self.space_to_depth)
        return list(self.unet.encoder(image))

    def nodule_probability(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """The nodule channel's probability ``(batch, 1, x, y)``, detached unless pool_gradient."""
        probability = torch.softmax(seg_logits, dim=1)[:, 1:2]
        return probability if self.pool_gradient else probability.detach()

    def heads(
        self, features: Sequence[torch.Tensor], guide: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Every enabled head on given encoder features (see :meth:`forward` for the outputs)."""
        latent = features[-1]
        outputs: dict[str, Any] = {keys.LATENT: latent}
        if self.expose_encoder_maps:
            outputs[keys.ENCODER_MAPS] = tuple(features)
        if self.seg_classes > 0:
            decoded = self.unet.decoder(list(features), self.unet.skip_connect)
            seg = self.unet.segmentation_head(decoded)
            if self.space_to_depth > 1:
                seg = F.interpolate(
                    seg, scale_factor=float(self.space_to_depth), mode="bilinear",
                    align_corners=False,
                )  # fmt: skip
            outputs[keys.SEG] = seg
        if self.embedding is None:
            return outputs
        pooled = latent
        outline: torch.Tensor | None = None
        if self.nodule_pooling is not None:
            weights = self.nodule_probability(outputs[keys.SEG])
            if guide is not None:
                # an unknown truth mask (NaN placeholder) leaves that sample on the prediction
                guide = guide.to(latent.dtype).reshape(weights.shape)
                weights = torch.where(torch.isnan(guide), weights, guide)
            pooled = self.nodule_pooling(features, weights)
            outline = pooled[:, -SHAPE_FEATURES:]
        embedding = self.embedding(pooled)
        head_input = embedding if outline is None else torch.cat([embedding, outline], dim=1)
        if self.classifier is not None:
            level = self.classifier(head_input)
            if self.level_head == "linear":
                outputs[keys.CLS] = level
            else:
                outputs[keys.CLS_ORDINAL] = level
                outputs[keys.CLS] = ordinal_log_probabilities(level)
        if self.radiomics_head is not None:
            outputs[keys.RAD] = self.radiomics_head(embedding[:, : self.radiomics_slice])
        for task, head in self.descriptor_heads.items():
            outputs[task] = head(head_input)
        if self.acr_level is not None:
            self._acr_route(outputs)
        return outputs

    def _acr_route(self, outputs: dict[str, Any]) -> None:
        """Adds the ACR route's level (and, with ``both``, the mixture of the two routes)."""
        assert self.acr_level is not None
        acr = self.acr_level({task: outputs[task] for task in self.descriptor_heads})
        if self.level_from == "acr_points":
            outputs[keys.CLS] = acr
            return
        direct = torch.log_softmax(outputs[keys.CLS], dim=1)
        outputs[keys.CLS_DIRECT], outputs[keys.CLS_ACR] = direct, acr
        outputs[keys.CLS] = torch.logsumexp(torch.stack([direct, acr]), dim=0) - math.log(2.0)

    def forward(self, image: torch.Tensor, guide: torch.Tensor | None = None) -> dict[str, Any]:
        """Runs the shared encoder and every enabled head.

        Args:
            image: ``(batch, channels, x, y)``.
            guide: Optional nodule mask ``(batch, 1, x, y)`` that nodule pooling uses instead
                of the predicted probability (truth guidance in early training epochs; never at
                validation or inference). Ignored by global pooling.

        Returns:
            ``latent`` (deepest encoder map) and the enabled outputs among ``seg`` (logits per
            pixel), ``cls`` (level logits, or class log-probabilities of an ordinal head, whose
            cumulative logits are ``cls_ordinal``), ``rad`` (radiomics prediction) and
            ``desc_<category>`` (descriptor logits; one logit per focus type for ``desc_foci``);
            ``encoder_maps`` if asked for.
        """
        return self.heads(self.encode(image), guide)
