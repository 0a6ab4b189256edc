"""What RLAR sees and whether its penalty moves it: per-sample cosines over a training run.

Trains the default multitask model (nodule pooling, 64x64, resnet10) on phantom images through
``MultitaskTrainer``'s real step, once with the weighted sum alone and once with each RLAR
configuration, measuring every few iterations the per-sample cosines between the mask's and the
level's latent gradients at the deepest and the pooled latent
(:class:`~thyroid_monai.mtl.alignment.AlignmentMonitor`, RLAR's own code). The epoch quantiles
go to ``results/rlar_alignment.json`` and a figure (``rlar_alignment.png``): the penalty acts
where the distribution it targets (the pooled latent's cosines above tau, for the default) moves.

With ``--ratios`` it also measures, on the weighted-sum model at the end of its training, how
large the penalty's gradient on the encoder is per unit weight, against the task gradient, for
each penalty form (latent, power, tau, ``|cos|``, detached mask direction): the figure that sets
the default weight.

    python benchmarks/rlar_alignment.py --ratios        # sum, rlar, rlar_first; about 15 min
    python benchmarks/rlar_alignment.py --epochs 2 --images 64 --configs sum rlar   # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Events

from thyroid_monai import keys
from thyroid_monai.engine import MultitaskTrainer, adamw
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.mtl import build_gradient_method
from thyroid_monai.mtl.alignment import ALIGNMENT_PREFIX
from thyroid_monai.mtl.rlar import RLAR, LatentChoice
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.tasks import TaskSet

from machine import describe_machine
from step_cost import phantom_batch

RESULTS = Path(__file__).parent / "results"
CONFIGS: dict[str, dict[str, Any] | None] = {
    "sum": None,
    "rlar": {},
    "rlar_first": {"weight": 0.05, "power": 2.0, "latent": "deepest", "every": 1},
}
"""RLAR options over its defaults (None: no RLAR). ``rlar_first`` is the first reconstruction."""
LATENTS: tuple[LatentChoice, ...] = ("deepest", "pooled")
FORMS = list(itertools.product(LATENTS, (1.0, 2.0), (0.1, 0.0), (False, True),
                               (None, keys.SEG)))  # fmt: skip
"""(latent, power, tau, absolute, detach) of the gradient-size table."""


class ShuffledBatches:
    """Batches of the phantom tensors in a new order every epoch (a minimal data loader)."""

    def __init__(self, data: dict[str, torch.Tensor], batch: int, seed: int):
        self.data, self.batch = data, batch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.data[keys.IMAGE]) // self.batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.data[keys.IMAGE]), generator=self.generator)
        for start in range(0, len(self) * self.batch, self.batch):
            rows = order[start : start + self.batch]
            yield {key: value[rows] for key, value in self.data.items()}


def phantom_data(images: int, size: int) -> dict[str, torch.Tensor]:
    """Phantom images rendered at 128 px (step_cost's batch) and resized to ``size``."""
    batch = phantom_batch(images, 128, num_classes=5)
    return {
        keys.IMAGE: F.interpolate(
            batch[keys.IMAGE], size=(size, size), mode="bilinear", align_corners=False
        ),
        keys.LABEL: (
            F.interpolate(batch[keys.LABEL], size=(size, size), mode="nearest") > 0.5
        ).float(),
        keys.TIRADS: batch[keys.TIRADS],
    }


def train(
    name: str, data: dict[str, torch.Tensor], args: argparse.Namespace
) -> tuple[MultitaskUNet, list[dict[str, float]]]:
    """Trains one configuration; returns the model and its per-epoch alignment and RLAR figures."""
    torch.manual_seed(args.seed)
    network = MultitaskUNet.for_tasks(TaskSet(), backbone=args.backbone)
    options = CONFIGS[name]
    regulariser = None if options is None else RLAR(warmup_epochs=args.rlar_warmup, **options)
    method = build_gradient_method("sum", tasks=TaskSet())
    trainer = MultitaskTrainer(device=torch.device("cpu"), max_epochs=args.epochs,
                               train_data_loader=ShuffledBatches(data, args.batch, args.seed),
                               network=network, optimizer=adamw(network, method, lr=args.lr),
                               loss_function=MultitaskLoss(), gradient_method=method,
                               regulariser=regulariser, alignment_every=args.every)  # fmt: skip
    history: list[dict[str, float]] = []

    def keep(engine: Any) -> None:
        wanted = (f"train_{ALIGNMENT_PREFIX}", "train_rlar_", "train_loss")
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if k.startswith(wanted)}
        history.append({"epoch": engine.state.epoch, **metrics})
        pooled = metrics.get(f"train_{ALIGNMENT_PREFIX}pooled_abs_mean", float("nan"))
        print(f"{name} epoch {engine.state.epoch}: pooled |c| {pooled:.3f}, "
              f"rlar penalty {metrics.get('train_rlar_penalty', 0.0):.4f}", flush=True)  # fmt: skip

    trainer.add_event_handler(Events.EPOCH_COMPLETED, keep)
    trainer.run()
    return network, history


def encoder_gradient_ratios(
    network: MultitaskUNet, data: dict[str, torch.Tensor], batches: int, batch: int
) -> list[dict[str, Any]]:
    """Per penalty form: ||d(penalty)/d(encoder)|| per unit weight / ||d(tasks)/d(encoder)||."""
    encoder = [p for p in network.unet.encoder.parameters() if p.requires_grad]

    def norm(value: torch.Tensor) -> float:
        grads = torch.autograd.grad(value, encoder, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))

    ratios: dict[tuple, list[float]] = {form: [] for form in FORMS}
    network.train()
    for index in range(batches):
        rows = slice(index * batch, (index + 1) * batch)
        outputs = network(data[keys.IMAGE][rows])
        losses = MultitaskLoss()(outputs, {keys.SEG: data[keys.LABEL][rows],
                                           keys.CLS: data[keys.TIRADS][rows]})  # fmt: skip
        task = norm(losses[keys.SEG] + losses[keys.CLS])
        for form in FORMS:
            latent, power, tau, absolute, detach = form
            rlar = RLAR(latent=latent, power=power, tau=tau, absolute=absolute, detach=detach)
            penalty, _ = rlar.penalty(losses, outputs)
            active = penalty.requires_grad and float(penalty.detach()) > 0
            ratios[form].append(norm(penalty) / task if active else 0.0)
    return [
        {"latent": f[0], "power": f[1], "tau": f[2], "absolute": f[3], "detach": f[4],
         "gradient_ratio_per_unit_weight": round(statistics.mean(v), 4)}
        for f, v in ratios.items()
    ]  # fmt: skip


def draw(histories: dict[str, list[dict[str, float]]], tau: float, path: Path) -> None:
    """One panel per latent: each configuration's median cosine and 5-95% band over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    latents = ("deepest", "pooled")
    figure, axes = plt.subplots(1, len(latents), figsize=(5.2 * len(latents), 3.6), sharey=True)
    for axis, latent in zip(axes, latents, strict=True):
        name = f"train_{ALIGNMENT_PREFIX}{latent}_"
        for config, history in histories.items():
            epochs = [row["epoch"] for row in history if f"{name}p50" in row]
            rows = [row for row in history if f"{name}p50" in row]
            (line,) = axis.plot(epochs, [r[f"{name}p50"] for r in rows], marker="o", label=config)
            axis.fill_between(epochs, [r[f"{name}p05"] for r in rows],
                              [r[f"{name}p95"] for r in rows], color=line.get_color(),
                              alpha=0.15, linewidth=0)  # fmt: skip
        axis.axhline(tau, color="grey", linestyle="--", linewidth=0.8)
        axis.axhline(0.0, color="grey", linewidth=0.6)
        axis.set_title(f"per-sample cosine, {latent} latent (median, 5-95%)")
        axis.set_xlabel("epoch")
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backbone", default="resnet10")
    parser.add_argument("--every", type=int, default=5, help="measure every this many steps")
    parser.add_argument("--rlar-warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ratios", action="store_true", help="also the gradient-size table")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = phantom_data(args.images, args.size)
    histories, trained = {}, {}
    for name in args.configs:
        trained[name], histories[name] = train(name, data, args)
    arguments = sys.argv[1:] if argv is None else argv
    result: dict[str, Any] = {
        "command": " ".join(["python benchmarks/rlar_alignment.py", *arguments]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": None},
        "rlar_defaults": RLAR().tracking_params(),
        "configs": {name: CONFIGS[name] for name in args.configs},
        "epochs": histories,
    }
    if args.ratios and "sum" in trained:
        batches = min(6, args.images // args.batch)
        result["encoder_gradient_ratios"] = encoder_gradient_ratios(trained["sum"], data, batches,
                                                                    args.batch)  # fmt: skip
    result["seconds"] = round(time.perf_counter() - started)
    result["machine"] = describe_machine(torch_threads=args.threads, torch=torch.__version__)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rlar_alignment.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    draw(histories, RLAR().tau, args.out / "rlar_alignment.png")
    return result


if __name__ == "__main__":
    main()
