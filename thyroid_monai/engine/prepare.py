"""Batch preparation: the image as network input, every task's target in one dictionary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

from thyroid_monai import descriptor_tasks, keys

DEFAULT_TARGETS: Mapping[str, str] = {
    keys.SEG: keys.LABEL,
    keys.CLS: keys.TIRADS,
    keys.RAD: keys.RADIOMICS,
    # descriptor targets are written under their task names by DescriptorsToIndicesd
    **{task: task for task in descriptor_tasks.DESCRIPTOR_TASKS},
}


class MultitaskPrepareBatch(PrepareBatch):
    """Returns ``(image, {task: target})`` from a collated batch.

    Args:
        targets: Task name to the batch key holding its target; a key absent from a batch is
            skipped, so a dataset without levels trains the mask only.
    """

    def __init__(self, targets: Mapping[str, str] | None = None):
        self.targets = dict(DEFAULT_TARGETS if targets is None else targets)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Moves the image and the available targets to ``device``."""
        if keys.IMAGE not in batchdata:
            raise KeyError(f"the batch has no '{keys.IMAGE}'; keys: {sorted(batchdata)}")
        image = batchdata[keys.IMAGE].to(device=device, non_blocking=non_blocking, **kwargs)
        targets = {
            task: batchdata[key].to(device=device, non_blocking=non_blocking, **kwargs)
            for task, key in self.targets.items()
            if isinstance(batchdata.get(key), torch.Tensor)
        }
        return image, targets
