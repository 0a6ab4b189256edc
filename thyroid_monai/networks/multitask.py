"""One network for the nodule mask, the TI-RADS level and the structured report, on FlexibleUNet.

The encoder is shared. The segmentation decoder reads every encoder scale (U-Net skips); the
classification heads read only the deepest encoder map ``z`` (the shared latent):

    z -> global average pool -> MLP -> embedding e -> level head -> level logits
                                         e[:, :k] -> linear -> radiomics prediction (optional)
                                         e -> one linear head per ACR category (optional)

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
* **Shared parameters.** The encoder always; the embedding MLP too when two or more tasks read it
  (level, radiomics, descriptors), otherwise it belongs to its only reader. So every parameter is
  either shared or belongs to exactly one task, and a task's own parameters receive gradient from
  that task alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from thyroid_monai import descriptor_tasks, keys
from thyroid_monai.networks.heads import OrdinalHead, ordinal_log_probabilities

DecoderNorm = Literal["instance", "group", "batch", "none"]
LevelHead = Literal["linear", "coral", "cumulative_link"]


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
        weights_path: Optional local state-dict file to initialise from (nothing is downloaded);
            a file holding ``{"model": state_dict}`` (a training checkpoint) works too.

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
        weights_path: str | Path | None = None,
    ):
        super().__init__()
        if backbone not in FLEXUNET_BACKBONE.register_dict:
            valid = ", ".join(sorted(FLEXUNET_BACKBONE.register_dict))
            raise ValueError(f"unknown backbone {backbone!r}; available: {valid}")
        if num_classes <= 0 and seg_classes <= 0 and not descriptor_heads:
            raise ValueError(
                "enable at least one task: num_classes > 0, seg_classes > 0 or descriptor_heads"
            )
        if radiomics_dim and not 0 < radiomics_slice <= embedding_dim:
            raise ValueError(
                f"radiomics_slice must be in 1..embedding_dim ({embedding_dim}), "
                f"got {radiomics_slice}"
            )
        if level_head not in ("linear", "coral", "cumulative_link"):
            raise ValueError(
                f"unknown level_head {level_head!r}; use linear, coral or cumulative_link"
            )
        self.num_classes = num_classes
        self.seg_classes = seg_classes
        self.radiomics_dim = radiomics_dim
        self.radiomics_slice = radiomics_slice
        self.decoder_norm = decoder_norm
        self.level_head = level_head
        self.expose_encoder_maps = expose_encoder_maps
        norm = _decoder_norm_layer(decoder_norm, decoder_channels, decoder_groups)
        self.unet = FlexibleUNet(
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
            # A level-only model keeps only the encoder: no unused parameters (DDP, optimisers).
            del self.unet.decoder
            del self.unet.segmentation_head
        deepest = FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"][-1]

        self.embedding: nn.Module | None = None
        self.classifier: nn.Module | None = None
        self.radiomics_head: nn.Module | None = None
        self.descriptor_heads = nn.ModuleDict()
        if num_classes > 0 or radiomics_dim > 0 or descriptor_heads:
            self.embedding = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(deepest, embedding_dim),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(embedding_dim, embedding_dim),
            )
        if num_classes > 0:
            head: nn.Module = (
                nn.Linear(embedding_dim, num_classes)
                if level_head == "linear"
                else OrdinalHead(embedding_dim, num_classes, level_head)
            )
            self.classifier = nn.Sequential(nn.ReLU(), head)
        if radiomics_dim > 0:
            self.radiomics_head = nn.Linear(radiomics_slice, radiomics_dim)
        if descriptor_heads:
            for category in descriptor_tasks.CATEGORIES:
                self.descriptor_heads[descriptor_tasks.task_name(category)] = nn.Sequential(
                    nn.ReLU(), nn.Linear(embedding_dim, descriptor_tasks.num_outputs(category))
                )
        if weights_path is not None:
            state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
            self.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The enabled tasks, in the order of the output dictionary."""
        tasks = []
        if self.seg_classes > 0:
            tasks.append(keys.SEG)
        if self.classifier is not None:
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
        return shared

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters that belong to exactly one task, per task (same names as the losses)."""
        params: dict[str, list[nn.Parameter]] = {}
        if self.seg_classes > 0:
            params[keys.SEG] = [
                *self.unet.decoder.parameters(),
                *self.unet.segmentation_head.parameters(),
            ]
        if self.classifier is not None:
            params[keys.CLS] = list(self.classifier.parameters())
        if self.radiomics_head is not None:
            params[keys.RAD] = list(self.radiomics_head.parameters())
        for task, head in self.descriptor_heads.items():
            params[task] = list(head.parameters())
        readers = self._embedding_readers()
        if self.embedding is not None and len(readers) == 1:
            params[readers[0]] = [*self.embedding.parameters(), *params[readers[0]]]
        return params

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps, shallow to deep (five for ResNets: the stem and four stages)."""
        return list(self.unet.encoder(image))

    def heads(self, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        """Every enabled head on given encoder features (see :meth:`forward` for the outputs)."""
        latent = features[-1]
        outputs: dict[str, Any] = {keys.LATENT: latent}
        if self.expose_encoder_maps:
            outputs[keys.ENCODER_MAPS] = tuple(features)
        if self.seg_classes > 0:
            decoded = self.unet.decoder(list(features), self.unet.skip_connect)
            outputs[keys.SEG] = self.unet.segmentation_head(decoded)
        if self.embedding is None:
            return outputs
        embedding = self.embedding(latent)
        if self.classifier is not None:
            level = self.classifier(embedding)
            if self.level_head == "linear":
                outputs[keys.CLS] = level
            else:
                outputs[keys.CLS_ORDINAL] = level
                outputs[keys.CLS] = ordinal_log_probabilities(level)
        if self.radiomics_head is not None:
            outputs[keys.RAD] = self.radiomics_head(embedding[:, : self.radiomics_slice])
        for task, head in self.descriptor_heads.items():
            outputs[task] = head(embedding)
        return outputs

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        """Runs the shared encoder and every enabled head.

        Args:
            image: ``(batch, channels, x, y)``.

        Returns:
            ``latent`` (deepest encoder map) and the enabled outputs among ``seg`` (logits per
            pixel), ``cls`` (level logits, or class log-probabilities of an ordinal head, whose
            cumulative logits are ``cls_ordinal``), ``rad`` (radiomics prediction) and
            ``desc_<category>`` (descriptor logits; one logit per focus type for ``desc_foci``);
            ``encoder_maps`` if asked for.
        """
        return self.heads(self.encode(image))
