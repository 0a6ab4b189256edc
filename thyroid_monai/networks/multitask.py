"""One network for the nodule mask and the TI-RADS level, on MONAI's FlexibleUNet.

The encoder is shared. The segmentation decoder reads every encoder scale (U-Net skips); the
classification head reads only the deepest encoder map ``z`` (the shared latent):

    z -> global average pool -> MLP -> embedding e -> linear -> level logits
                                         e[:, :k] -> linear -> radiomics prediction (optional)

Only the first ``k`` embedding dimensions are tied to the radiomics target, so the rest of ``e``
stays free for complementary deep features (RLAR, Salama et al. 2026). The network returns a
dictionary ``{"seg", "cls", "rad", "latent"}`` (keys present for the enabled tasks), and exposes
which parameters are shared between tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from thyroid_monai import keys

TASKS = (keys.SEG, keys.CLS)


class MultitaskUNet(nn.Module):
    """FlexibleUNet with a TI-RADS head on the deepest encoder features.

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
        weights_path: Optional local state-dict file to initialise from (nothing is downloaded).

    Raises:
        ValueError: For an unknown backbone, no enabled task, or ``radiomics_slice`` larger than the
            embedding.
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
        weights_path: str | Path | None = None,
    ):
        super().__init__()
        if backbone not in FLEXUNET_BACKBONE.register_dict:
            valid = ", ".join(sorted(FLEXUNET_BACKBONE.register_dict))
            raise ValueError(f"unknown backbone {backbone!r}; available: {valid}")
        if num_classes <= 0 and seg_classes <= 0:
            raise ValueError("enable at least one task: num_classes > 0 or seg_classes > 0")
        if radiomics_dim and not 0 < radiomics_slice <= embedding_dim:
            raise ValueError(
                f"radiomics_slice must be in 1..embedding_dim ({embedding_dim}), "
                f"got {radiomics_slice}"
            )
        self.num_classes = num_classes
        self.seg_classes = seg_classes
        self.radiomics_dim = radiomics_dim
        self.radiomics_slice = radiomics_slice
        # FlexibleUNet always builds a decoder; a level-only model simply never calls it.
        self.unet = FlexibleUNet(
            in_channels=in_channels,
            out_channels=max(seg_classes, 1),
            backbone=backbone,
            pretrained=False,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=2,
        )
        deepest = FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"][-1]
        self.embedding: nn.Module | None = None
        self.classifier: nn.Module | None = None
        self.radiomics_head: nn.Module | None = None
        if num_classes > 0:
            self.embedding = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(deepest, embedding_dim),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(embedding_dim, embedding_dim),
            )
            self.classifier = nn.Sequential(nn.ReLU(), nn.Linear(embedding_dim, num_classes))
            if radiomics_dim:
                self.radiomics_head = nn.Linear(radiomics_slice, radiomics_dim)
        if weights_path is not None:
            state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
            self.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The enabled task outputs."""
        tasks = []
        if self.seg_classes > 0:
            tasks.append(keys.SEG)
        if self.num_classes > 0:
            tasks.append(keys.CLS)
        if self.radiomics_head is not None:
            tasks.append(keys.RAD)
        return tuple(tasks)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task depends on: the encoder."""
        return list(self.unet.encoder.parameters())

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters specific to each task (the embedding is shared by level and radiomics)."""
        params: dict[str, list[nn.Parameter]] = {}
        if self.seg_classes > 0:
            params[keys.SEG] = [
                *self.unet.decoder.parameters(),
                *self.unet.segmentation_head.parameters(),
            ]
        if self.classifier is not None and self.embedding is not None:
            params[keys.CLS] = [*self.embedding.parameters(), *self.classifier.parameters()]
        if self.radiomics_head is not None:
            params[keys.RAD] = list(self.radiomics_head.parameters())
        return params

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs the shared encoder and every enabled head.

        Args:
            image: ``(batch, channels, x, y)``.

        Returns:
            ``latent`` (deepest encoder map) and the enabled outputs among ``seg`` (logits per
            pixel), ``cls`` (level logits) and ``rad`` (radiomics prediction).
        """
        features = self.unet.encoder(image)
        latent = features[-1]
        outputs = {keys.LATENT: latent}
        if self.seg_classes > 0:
            decoded = self.unet.decoder(features, self.unet.skip_connect)
            outputs[keys.SEG] = self.unet.segmentation_head(decoded)
        if self.embedding is not None and self.classifier is not None:
            embedding = self.embedding(latent)
            outputs[keys.CLS] = self.classifier(embedding)
            if self.radiomics_head is not None:
                outputs[keys.RAD] = self.radiomics_head(embedding[:, : self.radiomics_slice])
        return outputs
