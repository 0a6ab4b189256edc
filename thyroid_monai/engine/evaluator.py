"""Evaluation of the multitask model as a MONAI ``SupervisedEvaluator`` subclass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from thyroid_monai import keys
from thyroid_monai.engine.prepare import MultitaskPrepareBatch

NOT_TASKS = (
    keys.LATENT, keys.ENCODER_MAPS, keys.CLS_ORDINAL, keys.CLS_DIRECT, keys.CLS_ACR, keys.SEG,
)  # fmt: skip
"""Network outputs that are not per-sample predictions of a non-mask task."""

DEFAULT_REFERENCES: Mapping[str, str] = {
    keys.LABEL_TRUE: keys.LABEL_TRUE,
    keys.LABEL_CLS_TRUE: keys.TIRADS_TRUE,
    keys.SPACING: keys.SPACING,
}
"""Output key <- batch key of what the scores compare against beside the readers' targets."""


def pred_key(task: str) -> str:
    """Output key of a task's prediction (``pred_cls``, ``pred_desc_margin``...)."""
    return f"pred_{task}"


def label_key(task: str) -> str:
    """Output key of a task's target (``label_cls``, ``label_desc_margin``...)."""
    return f"label_{task}"


class MultitaskEvaluator(SupervisedEvaluator):
    """Runs the network in eval mode and exposes every task's prediction and target.

    ``engine.state.output`` holds ``image``, ``label`` (mask target) and ``pred`` (mask logits);
    ``pred_<task>`` and ``label_<task>`` for every other task the network predicts (``pred_cls``
    and ``label_cls`` for the level, ``pred_desc_margin``...); and the references found in the
    batch: ``label_true`` (true mask), ``label_cls_true`` (true level index), ``spacing``. MONAI
    post-processing and metrics address each by key.

    Args:
        prepare_batch: Defaults to :class:`MultitaskPrepareBatch`.
        references: Output key <- batch key of reference targets copied into the output when the
            batch has them (defaults to :data:`DEFAULT_REFERENCES`).
        **kwargs: Everything ``SupervisedEvaluator`` accepts (device, val_data_loader, network,
            postprocessing, key_val_metric, additional_metrics, val_handlers, ...).
    """

    def __init__(
        self,
        *,
        prepare_batch: Any = None,
        references: Mapping[str, str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(prepare_batch=prepare_batch or MultitaskPrepareBatch(), **kwargs)
        self.references = dict(DEFAULT_REFERENCES if references is None else references)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets.get(keys.SEG)}
        with engine.mode(engine.network):
            outputs = engine.inferer(inputs, engine.network)
        output = engine.state.output
        output[Keys.PRED] = outputs.get(keys.SEG)
        for task, prediction in outputs.items():
            if task in NOT_TASKS:
                continue
            output[pred_key(task)] = prediction
            output[label_key(task)] = targets.get(task)
        for out_key, batch_key in self.references.items():
            reference = batchdata.get(batch_key)
            if isinstance(reference, torch.Tensor):
                output[out_key] = reference.to(engine.state.device)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # decollates engine.state.output
        return engine.state.output
