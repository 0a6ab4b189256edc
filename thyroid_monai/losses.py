"""Task losses of the multitask model, returned per task so gradient methods can combine them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.losses import DiceCELoss
from torch import nn

from thyroid_monai import keys


class MultitaskLoss(nn.Module):
    """Computes one loss per task present in both the outputs and the targets.

    * mask: Dice + cross-entropy on softmax outputs (MONAI ``DiceCELoss``);
    * level: cross-entropy with optional label smoothing and class weights.

    Args:
        label_smoothing: Cross-entropy label smoothing for the level (reader noise).
        class_weights: Optional per-class weights for the level cross-entropy.
        dice_weight: Weight of the Dice term inside the mask loss.
        ce_weight: Weight of the cross-entropy term inside the mask loss.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.seg_loss = DiceCELoss(
            to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=ce_weight
        )
        weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.cls_loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Per-task scalar losses.

        Args:
            outputs: Network outputs (``seg`` logits ``(B, 2, x, y)``, ``cls`` logits ``(B, C)``).
            targets: ``seg`` mask ``(B, 1, x, y)`` and ``cls`` class indices ``(B,)``.

        Returns:
            ``{task: loss}`` for every task with both an output and a target.
        """
        losses = {}
        if keys.SEG in outputs and keys.SEG in targets:
            losses[keys.SEG] = self.seg_loss(outputs[keys.SEG], targets[keys.SEG])
        if keys.CLS in outputs and keys.CLS in targets:
            losses[keys.CLS] = self.cls_loss(outputs[keys.CLS], targets[keys.CLS].long().view(-1))
        if not losses:
            raise ValueError(
                f"no task has both an output and a target: outputs {sorted(outputs)}, "
                f"targets {sorted(targets)}"
            )
        return losses
