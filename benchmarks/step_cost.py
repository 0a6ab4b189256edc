"""Training-step cost of every gradient method and of RLAR, as a ratio to plain multitask learning.

Every configuration trains the same model (same architecture and initial weights) on the same
batch of phantom images on this machine, through ``MultitaskTrainer``'s real step (forward, losses,
regulariser, gradient method, optimiser step). The configurations are every name registered in
``thyroid_monai.mtl.GRADIENT_METHODS`` (so methods added later appear by themselves) plus RLAR
variants on top of the weighted sum. Steps are timed round-robin (one step of each configuration
per round) so that load changes on a shared machine hit all of them alike; a configuration that
applies its penalty every k steps is timed over k consecutive steps. Each timed block is preceded
by untimed steps of the same configuration (``--settle``, 1 by default), so that it finds memory
as a training run that repeats this configuration leaves it: without them a step's time depended
on the configuration before it (``sum`` right after a configuration with a larger memory peak was
faster than after itself, and the first per-task-gradient method after ``sum`` 5-6% slower than
the same method later in the round). The figure is the median step time as a ratio to ``sum``
measured in the same run, by wall clock and by process CPU time.

Every method that takes per-task gradients is also timed at the representation
(``<name>_representation``: ``aggregate_at="representation"``). The floor is the cost of the
task gradients alone: ``floor`` is a step whose gradient method takes the task gradients from the
engine (``thyroid_monai.mtl.gradients``) and writes their weighted sum, with no aggregation and no
diagnostics (``floor_representation`` likewise at the representation, ``floor_batched`` with the
engine's batched backward). Each per-task-gradient method's step time is also given as a ratio to
the floor of its level (``floor_ratios``), and its step split into phases (``breakdown_seconds``:
task gradients, aggregation, writing ``.grad``, the backward through the encoder at the
representation, diagnostics, and the rest: forward, losses, optimiser step). Memory per step:
on a GPU the peak allocated during the step; on the CPU (no per-step peak is measurable in one
process) the memory the per-task gradients hold (``task_gradient_mb``).

For RLAR a breakdown of one step into its phases says what dominates the cost.

    python benchmarks/step_cost.py            # batch 8, 256x256, resnet18 -> results/step_cost.json
    python benchmarks/step_cost.py --device cuda   # the same on a GPU, with peak memory
    python benchmarks/step_cost.py --quick    # batch 2, 64x64, a few repeats
    python benchmarks/step_cost.py --methods sum rlar rlar_every2
    python benchmarks/step_cost.py --threads 1   # steadier on a shared machine
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thyroid_monai import keys
from thyroid_monai.engine import MultitaskTrainer, adamw
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.mtl import GRADIENT_METHODS, GradientAggregator, build_gradient_method
from thyroid_monai.mtl.base import Combination, GradientMethod
from thyroid_monai.mtl.gradients import PhaseTimer, Representation, task_gradients, timed_phase
from thyroid_monai.mtl.rlar import RLAR, rlar_penalty
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.synthetic import Phantom, PhantomConfig, RenderSettings
from thyroid_monai.tasks import TaskSet
from thyroid_monai.tirads import get_grouping

from machine import describe_machine, write_result

RESULTS = Path(__file__).parent / "results" / "step_cost.json"
REFERENCE = "sum"
TASKS = TaskSet()
CPU = torch.device("cpu")
ALWAYS_ACTIVE = {"tau": -1.0}
RLAR_CONFIGS: dict[str, dict[str, Any]] = {
    "rlar": {},
    "rlar_active": ALWAYS_ACTIVE,
    "rlar_every1": {**ALWAYS_ACTIVE, "every": 1},
    "rlar_every2": {**ALWAYS_ACTIVE, "every": 2},
    "rlar_detach_seg": {**ALWAYS_ACTIVE, "every": 1, "detach": keys.SEG},
    "rlar_detach_cls": {**ALWAYS_ACTIVE, "every": 1, "detach": keys.CLS},
}
"""RLAR variants (options of :class:`RLAR` over its defaults, no warm-up), on the weighted sum.

``rlar`` keeps the default margin, so its cost depends on the batch: the second-order pass runs
only on steps where some sample's cosine exceeds tau (``active_step_share`` in the results). The
others use tau = -1, which makes every applied step pay for it: the worst case. ``rlar_active``
is the default schedule (the penalty on every 4th step), ``rlar_every1`` / ``rlar_every2`` apply
it on every / every 2nd step, and the detached variants every step."""


REPRESENTATION = "_representation"
FLOORS = ("floor", "floor" + REPRESENTATION, "floor_batched")
FLOOR_TOLERANCE, CAMEGRAD_TARGET, CAMEGRAD_REPRESENTATION_TARGET = 1.10, 1.25, 1.08
"""Issue 17's targets: every per-task-gradient method within 10% of its floor; CAME-Grad at most
1.25 times the plain step, at the representation 1.08 times."""


class TaskGradientsFloor(GradientAggregator):
    """The floor of every per-task-gradient method: the engine's task gradients, nothing else.

    Writes the weighted sum of the task gradients (so the optimiser steps as with any method);
    no aggregation, no diagnostics.

    Args:
        task_weights: See :class:`GradientAggregator`.
        aggregate_at: ``"parameters"`` or ``"representation"``.
        batched: The engine's batched backward instead of one backward per task.
    """

    name = "floor"

    def __init__(
        self,
        task_weights: dict[str, float] | None = None,
        aggregate_at: str = "parameters",
        batched: bool = False,
    ):
        super().__init__(task_weights, "shared", aggregate_at)  # type: ignore[arg-type]
        self.batched = batched

    def backward(
        self,
        losses: Any,
        *,
        shared_params: Any,
        task_params: Any = None,
        latent: torch.Tensor | None = None,
        epoch: int = 0,
        representation: Representation | None = None,
    ) -> dict[str, float]:
        """Task gradients, their weighted sum written to ``.grad``."""
        aggregated, others = self._columns(shared_params, task_params, representation)
        weights = self.head_weights(tuple(losses))
        with timed_phase(self.timer, "task_gradients"):
            gradients = task_gradients(
                losses, aggregated, other_params=others, weights=weights, batched=self.batched
            )
        if self.timer is not None:
            self.timer.task_gradient_bytes.append(gradients.nbytes())
        coefficients = torch.tensor([weights[task] for task in gradients.tasks])
        with timed_phase(self.timer, "write"):
            combination = Combination(torch.empty(0), coefficients)  # c @ G added to .grad
            leaf_grads = self._write(gradients, combination, representation)
        if representation is not None and leaf_grads:
            with timed_phase(self.timer, "representation_backward"):
                representation.backward(leaf_grads)
        return {}


def build_method(spec: str) -> GradientMethod:
    """A configuration's gradient method: a registered name, ``<name>_representation``, a floor."""
    weights = TASKS.active_weights
    if spec in FLOORS:
        at = "representation" if spec.endswith(REPRESENTATION) else "parameters"
        return TaskGradientsFloor(weights, aggregate_at=at, batched=spec == "floor_batched")
    if spec.endswith(REPRESENTATION):
        return build_gradient_method(
            spec.removesuffix(REPRESENTATION), tasks=TASKS, aggregate_at="representation"
        )
    return build_gradient_method(spec, tasks=TASKS)


def takes_task_gradients(name: str) -> bool:
    """Whether a registered method computes per-task gradients with its default options."""
    method = build_gradient_method(name, tasks=TASKS)
    return isinstance(method, GradientAggregator) and not (
        hasattr(method, "measure_conflict") and not method.measure_conflict
    )


def phantom_batch(batch: int, size: int, num_classes: int) -> dict[str, torch.Tensor]:
    """A batch of phantom images with their consensus masks and levels, x first as MONAI loads."""
    config = PhantomConfig(seed=0, render=RenderSettings(height=size, width=size))
    cases = list(Phantom(config).cases(batch))
    grouping = get_grouping("acr5")
    images = np.stack([c.image.T[None] for c in cases]).astype(np.float32) / 255.0
    masks = np.stack([c.consensus.T[None] for c in cases]).astype(np.float32)
    levels = [min(grouping.index(c.majority), num_classes - 1) for c in cases]
    return {
        keys.IMAGE: torch.as_tensor(images),
        keys.LABEL: torch.as_tensor(masks),
        keys.TIRADS: torch.as_tensor(levels, dtype=torch.long),
    }


def configurations(selected: list[str] | None) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Name -> (gradient method, RLAR options or None) for every configuration to time."""
    available: dict[str, tuple[str, dict[str, Any] | None]] = {
        name: (name, None) for name in GRADIENT_METHODS
    }
    available.update({name: (name, None) for name in FLOORS})
    available.update(
        {
            name + REPRESENTATION: (name + REPRESENTATION, None)
            for name in GRADIENT_METHODS
            if takes_task_gradients(name)
        }
    )
    available.update({name: (REFERENCE, options) for name, options in RLAR_CONFIGS.items()})
    if REFERENCE not in available:
        raise SystemExit(f"the reference method {REFERENCE!r} is not registered")
    if selected is None:
        return available
    unknown = sorted(set(selected) - set(available))
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; available: {sorted(available)}")
    return {name: available[name] for name in dict.fromkeys([REFERENCE, *selected])}


def build_trainer(
    model: MultitaskUNet,
    method_name: str,
    rlar_options: dict[str, Any] | None,
    device: torch.device,
    cpu_memory: str = "keep",
) -> MultitaskTrainer:
    """A trainer for one configuration, on its own copy of the model, its phases timed."""
    network = copy.deepcopy(model).to(device)
    regulariser = None if rlar_options is None else RLAR(warmup_epochs=0, **rlar_options)
    # Every method is built for the bundle's default task set (mask and level, their weights),
    # and the bundle's optimiser steps the method's own parameters too.
    method = build_method(method_name)
    method.timer = PhaseTimer(synchronize=lambda: synchronize(device))
    trainer = MultitaskTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[{}],
        network=network,
        optimizer=adamw(network, method, lr=1e-4),
        loss_function=MultitaskLoss(),
        gradient_method=method,
        regulariser=regulariser,
        cpu_memory=cpu_memory,
    )
    trainer.state.epoch = 1
    trainer.state.iteration = 0
    return trainer


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work, so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], count: int, device: torch.device = CPU) -> tuple[float, float]:
    """Mean wall and CPU seconds per step over ``count`` consecutive steps."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        step()
    synchronize(device)
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def settle(step: Callable[[], None], trainer: MultitaskTrainer, count: int) -> None:
    """Runs ``count`` untimed steps of a configuration, their phases not recorded.

    The timed steps then find the allocator and caches as a training run of this configuration
    leaves them.
    """
    timer, trainer.gradient_method.timer = trainer.gradient_method.timer, None
    try:
        for _ in range(count):
            step()
    finally:
        trainer.gradient_method.timer = timer


def rlar_breakdown(
    model: MultitaskUNet, batch: dict[str, torch.Tensor], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each phase of one RLAR step (weighted sum, default options)."""
    network = copy.deepcopy(model).to(device).train()
    batch = {key: value.to(device) for key, value in batch.items()}
    clock = time.perf_counter

    def now() -> float:
        synchronize(device)
        return clock()

    loss_function, regulariser = MultitaskLoss(), RLAR(warmup_epochs=0)
    targets = {keys.SEG: batch[keys.LABEL], keys.CLS: batch[keys.TIRADS]}
    phases: dict[str, list[float]] = {
        "forward_and_losses": [],
        "probe_seg_direction": [],
        "probe_cls_direction": [],
        "final_backward_with_second_order": [],
        "plain_backward_reference": [],
    }
    for _ in range(repeats):
        network.zero_grad()
        start = now()
        outputs = network(batch[keys.IMAGE])
        losses = loss_function(outputs, targets)
        phases["forward_and_losses"].append(now() - start)
        latents = regulariser.latents(outputs)
        start = now()
        grad_seg = regulariser.latent_gradients(losses[keys.SEG], latents, create_graph=True)
        phases["probe_seg_direction"].append(now() - start)
        start = now()
        grad_cls = regulariser.latent_gradients(losses[keys.CLS], latents, create_graph=True)
        phases["probe_cls_direction"].append(now() - start)
        start = now()
        (losses[keys.SEG] + losses[keys.CLS]).backward(retain_graph=True)
        phases["plain_backward_reference"].append(now() - start)
        network.zero_grad()
        penalty, _ = rlar_penalty(grad_seg[0], grad_cls[0], tau=-1.0)  # always active
        start = now()
        (losses[keys.SEG] + losses[keys.CLS] + regulariser.weight * penalty).backward()
        phases["final_backward_with_second_order"].append(now() - start)
    return {name: round(statistics.median(values), 4) for name, values in phases.items()}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the batch, size, repeats and warm-up of ``--quick`` or the full run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, 64x64, 3 repeats, 1 warm-up")
    parser.add_argument("--methods", nargs="+", help="configurations to time (sum is always)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--decoder-norm", default="group")
    parser.add_argument("--repeats", type=int, help="timed rounds (12, quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (2, quick 1)")
    parser.add_argument(
        "--settle",
        type=int,
        default=1,
        help="untimed steps of a configuration before each of its timed blocks (1)",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument(
        "--cpu-memory",
        default="keep",
        choices=("keep", "system"),
        help="the trainers' cpu_memory (keep: glibc keeps freed memory mapped, the default)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    defaults = (2, 64, 3, 1) if args.quick else (8, 256, 12, 2)
    for name, default in zip(("batch", "size", "repeats", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def build_trainers(
    model: MultitaskUNet,
    methods: list[str] | None,
    device: torch.device,
    errors: dict[str, str],
    cpu_memory: str = "keep",
) -> dict[str, MultitaskTrainer]:
    """A trainer per configuration; those that cannot be built are skipped into ``errors``."""
    trainers: dict[str, MultitaskTrainer] = {}
    for name, (method, options) in configurations(methods).items():
        try:
            trainers[name] = build_trainer(model, method, options, device, cpu_memory)
        except Exception as error:
            errors[name] = f"{type(error).__name__}: {error}"
            print(f"skipping {name}: {errors[name]}")
    return trainers


def time_steps(
    trainers: dict[str, MultitaskTrainer],
    batch: dict[str, torch.Tensor],
    args: argparse.Namespace,
    device: torch.device,
    errors: dict[str, str],
    peak_memory: dict[str, list[int]],
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[bool]]]:
    """Wall and CPU seconds per step of each trainer, interleaved by round, and RLAR activity.

    A trainer that fails is dropped into ``errors``; on a GPU each step's peak allocated bytes go
    to ``peak_memory``.
    """
    cycle = {
        name: trainer.regulariser.every if trainer.regulariser is not None else 1
        for name, trainer in trainers.items()
    }

    active: dict[str, list[bool]] = {name: [] for name in trainers}
    peak_memory.update({name: [] for name in trainers})

    def step(name: str, trainer: MultitaskTrainer, record: bool = True) -> Callable[[], None]:
        def run() -> None:
            trainer.state.iteration += 1
            output = trainer._iteration(trainer, batch)
            if record and trainer.regulariser is not None:
                active[name].append(output[0].get("rlar_penalty", 0.0) > 0)

        return run

    wall: dict[str, list[float]] = {name: [] for name in trainers}
    cpu: dict[str, list[float]] = {name: [] for name in trainers}
    for round_index in range(args.warmup + args.repeats):
        if round_index == args.warmup:  # the phases of the timed rounds only
            for trainer in trainers.values():
                trainer.gradient_method.timer = PhaseTimer(lambda: synchronize(device))
        for name, trainer in trainers.items():
            try:
                settle(step(name, trainer, record=False), trainer, args.settle)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = timed(step(name, trainer), cycle[name], device)
            except Exception as error:
                errors[name] = f"{type(error).__name__}: {error}"
                print(f"dropping {name}: {errors[name]}")
                continue
            if round_index >= args.warmup:
                wall[name].append(seconds[0])
                cpu[name].append(seconds[1])
                if device.type == "cuda":
                    peak_memory[name].append(torch.cuda.max_memory_allocated(device))
        trainers = {name: t for name, t in trainers.items() if name not in errors}
    return wall, cpu, active


def phase_breakdown(
    trainers: dict[str, MultitaskTrainer], medians: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Median seconds of each phase of a method's backward, and the rest of the step."""
    breakdown = {}
    for name, trainer in trainers.items():
        timer = trainer.gradient_method.timer
        if name not in medians or timer is None or not timer.seconds:
            continue
        cycle = trainer.regulariser.every if trainer.regulariser is not None else 1
        phases = {
            phase: statistics.median(values) / cycle for phase, values in timer.seconds.items()
        }
        phases["rest_of_step"] = medians[name] - sum(phases.values())
        breakdown[name] = {phase: round(seconds, 4) for phase, seconds in phases.items()}
    return breakdown


def floor_of(name: str) -> str | None:
    """The floor a configuration's step is compared with (None: it takes no task gradients)."""
    if name in FLOORS or (name not in GRADIENT_METHODS and not name.endswith(REPRESENTATION)):
        return None
    if name.endswith(REPRESENTATION):
        return "floor" + REPRESENTATION
    return "floor" if takes_task_gradients(name) else None


def floor_ratios(medians: dict[str, float]) -> dict[str, float]:
    """Each per-task-gradient method's step time over its floor's."""
    ratios = {}
    for name, seconds in medians.items():
        floor = floor_of(name)
        if floor is not None and floor in medians:
            ratios[name] = round(seconds / medians[floor], 3)
    return ratios


OWN_PHASES = ("aggregation", "write", "diagnostics")
"""The phases a method adds to its floor (the floor itself writes the weighted sum)."""


def floor_ratios_from_phases(
    medians: dict[str, float], breakdown: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Each method's ratio to its floor counting only the phases it adds to the floor's step.

    ``(floor step + method's aggregation, write, diagnostics - floor's write) / floor step``: the
    shared work (forward, task gradients, backward through the encoder, optimiser) is taken from
    the floor's own step, so load changes between the configurations' steps, which dominate on a
    busy machine, drop out.
    """
    ratios = {}
    for name, phases in breakdown.items():
        floor = floor_of(name)
        if floor is None or floor not in medians or floor not in breakdown:
            continue
        own = sum(phases.get(phase, 0.0) for phase in OWN_PHASES)
        step = medians[floor] + own - breakdown[floor].get("write", 0.0)
        ratios[name] = round(step / medians[floor], 3)
    return ratios


def targets(ratios: dict[str, float], to_floor: dict[str, float]) -> dict[str, Any]:
    """Issue 17's targets, met or not, with the figures they are read from."""
    over = {name: ratio for name, ratio in to_floor.items() if ratio > FLOOR_TOLERANCE}
    result: dict[str, Any] = {
        f"every_method_within_{FLOOR_TOLERANCE}x_of_its_floor": not over,
        "methods_over_the_floor_tolerance": over,
    }
    for name, target in (
        ("camegrad", CAMEGRAD_TARGET),
        ("camegrad" + REPRESENTATION, CAMEGRAD_REPRESENTATION_TARGET),
    ):
        if name in ratios:
            result[f"{name}_at_most_{target}x_sum"] = ratios[name] <= target
    return result


def task_gradient_megabytes(trainers: dict[str, MultitaskTrainer]) -> dict[str, float]:
    """Memory the per-task gradients of a step hold (median over steps), in MB."""
    sizes = {}
    for name, trainer in trainers.items():
        timer = trainer.gradient_method.timer
        if timer is not None and timer.task_gradient_bytes:
            sizes[name] = round(statistics.median(timer.task_gradient_bytes) / 2**20, 1)
    return sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num_classes = 5
    model = MultitaskUNet(
        num_classes=num_classes, backbone=args.backbone, decoder_norm=args.decoder_norm
    )
    device = torch.device(args.device)
    batch = phantom_batch(args.batch, args.size, num_classes)
    errors: dict[str, str] = {}
    trainers = build_trainers(model, args.methods, device, errors, args.cpu_memory)
    load_before = os.getloadavg()
    peak_memory: dict[str, list[int]] = {}
    wall, cpu, active = time_steps(trainers, batch, args, device, errors, peak_memory)
    load_after = os.getloadavg()
    medians = {name: statistics.median(values) for name, values in wall.items() if values}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items() if values}
    if REFERENCE not in medians:
        raise SystemExit(f"the reference {REFERENCE!r} failed: {errors.get(REFERENCE)}")
    ratios = {n: round(m / medians[REFERENCE], 3) for n, m in medians.items()}
    to_floor = floor_ratios(medians)
    breakdown = phase_breakdown(trainers, medians)
    result = {
        "command": " ".join(
            ["python benchmarks/step_cost.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "reference": REFERENCE,
        "ratios": ratios,
        "floor_ratios": to_floor,
        "targets": targets(ratios, to_floor),
        "cpu_ratios": {n: round(m / cpu_medians[REFERENCE], 3) for n, m in cpu_medians.items()},
        "median_step_seconds": {n: round(m, 4) for n, m in medians.items()},
        "breakdown_seconds": breakdown,
        "floor_ratios_from_phases": floor_ratios_from_phases(medians, breakdown),
        "peak_memory_mb": {
            n: round(statistics.median(v) / 2**20, 1) for n, v in peak_memory.items() if v
        },
        "task_gradient_mb": task_gradient_megabytes(trainers),
        "active_step_share": {
            n: round(sum(flags) / len(flags), 3) for n, flags in active.items() if flags
        },
        "rlar_breakdown_seconds": rlar_breakdown(model, batch, max(2, args.repeats // 3), device)
        if any(name.startswith("rlar") for name in medians)
        else {},
        "errors": errors,
        "settings": {
            "batch": args.batch,
            "image_size": [args.size, args.size],
            "backbone": args.backbone,
            "decoder_norm": args.decoder_norm,
            "device": str(device),
            "repeats": args.repeats,
            "warmup": args.warmup,
            "settle": args.settle,
            "cpu_memory": args.cpu_memory,
            "rlar_defaults": repr(RLAR(warmup_epochs=0)),
            "rlar_configs": RLAR_CONFIGS,
        },
        "machine": {
            **describe_machine(torch_threads=args.threads, torch=torch.__version__),
            "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
