"""Evaluation of the multitask model as a MONAI ``SupervisedEvaluator`` subclass."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from thyroid_monai import keys
from thyroid_monai.engine.prepare import MultitaskPrepareBatch


class MultitaskEvaluator(SupervisedEvaluator):
    """Runs the network in eval mode and exposes every task's prediction and target.

    ``engine.state.output`` holds ``image``, ``label`` (mask), ``pred`` (mask logits),
    ``pred_cls`` (level logits) and ``label_cls`` (level index), so MONAI post-processing and
    metrics can address each task by key.

    Args:
        prepare_batch: Defaults to :class:`MultitaskPrepareBatch`.
        **kwargs: Everything ``SupervisedEvaluator`` accepts (device, val_data_loader, network,
            postprocessing, key_val_metric, additional_metrics, val_handlers, ...).
    """

    def __init__(self, *, prepare_batch: Any = None, **kwargs: Any):
        super().__init__(prepare_batch=prepare_batch or MultitaskPrepareBatch(), **kwargs)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets.get(keys.SEG)}
        with engine.mode(engine.network):
            outputs = engine.inferer(inputs, engine.network)
        engine.state.output[Keys.PRED] = outputs.get(keys.SEG)
        if keys.CLS in outputs:
            engine.state.output[keys.PRED_CLS] = outputs[keys.CLS]
            engine.state.output[keys.LABEL_CLS] = targets.get(keys.CLS)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
