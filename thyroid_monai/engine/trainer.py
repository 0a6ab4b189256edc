"""The multitask training step, as a MONAI ``SupervisedTrainer`` subclass.

One iteration: prepare the batch -> forward (a dictionary of outputs) -> per-task losses -> an
optional loss regulariser (RLAR) folds its term into the task losses -> ``gradient_method.backward``
writes the gradients -> optimiser step -> MONAI's iteration events.
``engine.state.output`` then holds ``image``, ``label``, ``pred`` (mask logits), ``pred_cls``,
``loss`` (the joint objective) and every per-task loss and diagnostic as a float, and the epoch
means of those floats land in ``engine.state.metrics`` as ``train_<name>`` (so MLflow logs them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import ensure_tuple
from monai.utils.enums import CommonKeys as Keys

from thyroid_monai import keys
from thyroid_monai.engine.memory import CPU_MEMORY_CHOICES, apply_cpu_memory
from thyroid_monai.engine.prepare import MultitaskPrepareBatch
from thyroid_monai.mtl.alignment import AlignmentMonitor
from thyroid_monai.mtl.base import GradientMethod, WeightedSum
from thyroid_monai.mtl.distributed import all_reduce_gradients, is_data_parallel, local_gradients
from thyroid_monai.mtl.gradients import Representation, RepresentationCut, representation_cut
from thyroid_monai.mtl.rlar import RLAR


class EpochScalarMeans:
    """Averages the float entries of ``engine.state.output`` over an epoch.

    At the end of each epoch, every float key ``k`` seen during the epoch is stored as
    ``engine.state.metrics["train_" + k]``. The trainer attaches it before any handler of a config,
    so MLflow and stats handlers read this epoch's values at the same event.
    """

    def __init__(self, prefix: str = "train_"):
        self.prefix = prefix
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def attach(self, engine: Engine) -> None:
        """Registers the handlers on ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self, engine: Engine) -> None:
        """Clears the sums."""
        self._sums.clear()
        self._counts.clear()

    def update(self, engine: Engine) -> None:
        """Adds this iteration's floats."""
        output = engine.state.output
        first = output[0] if isinstance(output, Sequence) and output else output
        if not isinstance(first, Mapping):
            return
        for key, value in first.items():
            if isinstance(value, float):
                self._sums[key] += value
                self._counts[key] += 1

    def complete(self, engine: Engine) -> None:
        """Writes the epoch means into ``engine.state.metrics``."""
        for key, total in self._sums.items():
            engine.state.metrics[f"{self.prefix}{key}"] = total / self._counts[key]


class MultitaskTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose step trains several tasks through a gradient method.

    Args:
        network: Model returning ``{task: output, "latent": tensor}``; if it has
            ``shared_parameters()``, those are the parameters shared by the tasks, otherwise all.
        loss_function: Returns ``{task: scalar loss}`` from ``(outputs, targets)``.
        gradient_method: How per-task losses become gradients; defaults to the weighted sum.
        regulariser: Optional RLAR regulariser; its term is folded into the task losses before
            the gradient method sees them (see :class:`~thyroid_monai.mtl.rlar.RLAR`). The
            reported ``loss`` and ``loss_<task>`` stay the unregularised task losses, so runs
            with and without it compare; the penalty is reported as ``rlar_penalty``.
        prepare_batch: Defaults to :class:`MultitaskPrepareBatch`.
        level_guide_epochs: Truth guidance of the level's nodule pooling: in epoch ``e`` a batch
            pools where the *true* mask is (``network(image, guide=mask)``) with probability
            ``max(0, 1 - (e - 1) / level_guide_epochs)``, else where the predicted mask is;
            0 never. Early predicted masks are poor, so the level head learns to read the nodule
            before it has to find it. Validation and inference always use the prediction. The
            default, 4, is what the level ablation ran (docs/level.md).
        alignment_every: Measure the per-sample cosines RLAR penalises, at the deepest and the
            pooled latent, every this many iterations (0: never), with or without RLAR; their
            epoch quantiles become ``train_align_*`` metrics
            (:class:`~thyroid_monai.mtl.alignment.AlignmentMonitor`). Each measurement costs two
            backward passes to the latent.
        cpu_memory: ``"keep"`` (default): on a CPU device, glibc's malloc keeps freed memory
            mapped between steps (:func:`~thyroid_monai.engine.memory.keep_freed_memory`; steps
            measured 20-25% faster, the process holds its peak heap); ``"system"`` leaves the
            allocator as it is. Process-wide; nothing is done on a GPU device.
        **kwargs: Everything else ``SupervisedTrainer`` accepts (device, max_epochs,
            train_data_loader, optimizer, train_handlers, ...). ``amp`` is not supported because
            gradient methods edit gradients before the step.
    """

    def __init__(
        self,
        *,
        network: torch.nn.Module,
        loss_function: torch.nn.Module,
        gradient_method: GradientMethod | None = None,
        regulariser: RLAR | None = None,
        prepare_batch: Any = None,
        level_guide_epochs: int = 4,
        alignment_every: int = 0,
        cpu_memory: str = "keep",
        **kwargs: Any,
    ):
        unwrapped = getattr(network, "module", network)  # DistributedDataParallel
        if regulariser is not None and not getattr(
            unwrapped, "samples_independent_after_latent", True
        ):
            raise ValueError(
                "RLAR compares per-sample latent gradients, but this network mixes the samples of "
                "a batch after the latent (BatchNorm decoder); use decoder_norm "
                "'group', 'instance' or 'none'"
            )
        if level_guide_epochs < 0:
            raise ValueError(f"level_guide_epochs must be >= 0, got {level_guide_epochs}")
        if cpu_memory not in CPU_MEMORY_CHOICES:
            raise ValueError(f"cpu_memory must be one of {CPU_MEMORY_CHOICES}, got {cpu_memory!r}")
        self.level_guide_epochs = int(level_guide_epochs)
        if kwargs.get("amp"):
            raise ValueError("MultitaskTrainer does not support amp: gradient methods edit .grad")
        # The epoch means must be computed before any handler (MLflow, stats) reads the metrics at
        # the same event, so they go first in the handler list.
        if alignment_every < 0:
            raise ValueError(f"alignment_every must be >= 0, got {alignment_every}")
        self.alignment = AlignmentMonitor(alignment_every) if alignment_every else None
        handlers = kwargs.pop("train_handlers", None) or []
        first = (
            [EpochScalarMeans()] if self.alignment is None else [EpochScalarMeans(), self.alignment]
        )
        kwargs["train_handlers"] = [*first, *ensure_tuple(handlers)]
        super().__init__(
            network=network,
            loss_function=loss_function,
            prepare_batch=prepare_batch or MultitaskPrepareBatch(),
            **kwargs,
        )
        self.gradient_method = gradient_method or WeightedSum()
        self.regulariser = regulariser
        on_cpu = torch.device(self.state.device).type == "cpu"
        self.cpu_memory_kept = on_cpu and apply_cpu_memory(cpu_memory)
        if self.gradient_method.needs_representation:
            self._check_representation(unwrapped, regulariser)
        if regulariser is not None:
            regulariser.prepare(unwrapped)

    def _check_representation(self, network: torch.nn.Module, regulariser: RLAR | None) -> None:
        """Refuses a representation-level method the network or the regulariser cannot serve."""
        if not hasattr(network, "representation_module"):
            raise ValueError(
                f"{self.gradient_method!r} aggregates at the representation, but "
                f"{type(network).__name__} does not declare representation_module()"
            )
        if regulariser is not None and regulariser.latent == "encoder":
            # the cut hands the heads detached maps: RLAR would see each map's own gradient,
            # not the gradient through the deeper maps
            raise ValueError(
                "RLAR latent='encoder' compares gradients at every encoder map, which the "
                "representation-level gradient method cuts; use latent 'deepest' or 'pooled'"
            )

    def _representation_cut(self) -> AbstractContextManager[RepresentationCut | None]:
        """Cuts the graph at the shared encoder when the gradient method aggregates there."""
        if not self.gradient_method.needs_representation:
            return nullcontext()
        module = getattr(self._model(), "representation_module")()  # noqa: B009  (declared)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"representation_module() returned {type(module).__name__}")
        return representation_cut(module)

    def _forward(
        self, engine: SupervisedTrainer, inputs: torch.Tensor, guide: torch.Tensor | None
    ) -> tuple[dict[str, Any], Representation | None]:
        """The network's outputs, and the representation cut if the gradient method needs it."""
        with self._representation_cut() as cut:
            if guide is None:
                outputs = engine.inferer(inputs, engine.network)
            else:
                outputs = engine.inferer(inputs, engine.network, guide=guide)
        return outputs, None if cut is None else cut.get()

    def _model(self) -> torch.nn.Module:
        return getattr(self.network, "module", self.network)  # unwrap DistributedDataParallel

    def shared_params(self) -> list[torch.Tensor]:
        """Parameters shared between the tasks (the encoder), else every trainable parameter."""
        network = self._model()
        shared = getattr(network, "shared_parameters", network.parameters)
        return [p for p in shared() if p.requires_grad]

    def task_params(self) -> dict[str, list[torch.Tensor]] | None:
        """Parameters specific to each task, if the network declares them."""
        declared = getattr(self._model(), "task_parameters", None)
        if declared is None:
            return None
        return {task: [p for p in ps if p.requires_grad] for task, ps in declared().items()}

    def level_guide(self, epoch: int, targets: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The true mask for this batch's level pooling, or None (see ``level_guide_epochs``)."""
        mask = targets.get(keys.SEG)
        if self.level_guide_epochs <= 0 or mask is None:
            return None
        share = max(0.0, 1.0 - (epoch - 1) / self.level_guide_epochs)
        if share <= 0.0 or float(torch.rand(())) >= share:
            return None
        return mask.float()

    def optimised_params(self) -> list[torch.Tensor]:
        """Every parameter the optimiser steps (network and gradient-method parameters)."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets.get(keys.SEG)}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        # Under DDP, forward and the gradient method run without gradient synchronisation; the
        # combined gradient is all-reduced once below (thyroid_monai.mtl.distributed).
        deferred_sync = ExitStack()
        deferred_sync.enter_context(local_gradients(engine.network))

        guide = self.level_guide(engine.state.epoch, targets)
        outputs, representation = self._forward(engine, inputs, guide)
        engine.state.output[Keys.PRED] = outputs.get(keys.SEG)
        if keys.CLS in outputs:
            engine.state.output[keys.PRED_CLS] = outputs[keys.CLS]
            engine.state.output[keys.LABEL_CLS] = targets.get(keys.CLS)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        losses = engine.loss_function(outputs, targets)
        method = self.gradient_method
        engine.state.output[Keys.LOSS] = method.joint_loss(losses).detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if self.alignment is not None and self.alignment.due(engine.state.iteration):
            self.alignment.measure(losses, outputs)
        objective, regularisation = losses, dict[str, float]()
        if self.regulariser is not None:
            objective, regularisation = self.regulariser(
                losses, outputs, epoch=engine.state.epoch, iteration=engine.state.iteration
            )
        # only a method that asked for the cut receives it (methods written before it existed)
        cut = {} if representation is None else {"representation": representation}
        diagnostics = method.backward(
            objective,
            shared_params=self.shared_params(),
            task_params=self.task_params(),
            latent=outputs.get(keys.LATENT),
            epoch=engine.state.epoch,
            **cut,
        )
        deferred_sync.close()
        if is_data_parallel(engine.network):
            all_reduce_gradients(self.optimised_params())
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()

        scalars = {f"loss_{task}": float(loss.detach()) for task, loss in losses.items()}
        scalars["loss"] = float(engine.state.output[Keys.LOSS])
        scalars.update(regularisation)
        scalars.update(diagnostics)
        engine.state.output.update(scalars)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
