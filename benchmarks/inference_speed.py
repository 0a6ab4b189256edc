"""Inference speed: the multitask network against a segmentation-only FlexibleUNet.

Both networks use the same encoder backbone and input size; the multitask one adds the level head
(and, like the bundle, group-normalised decoder). Each is timed at batch 1 (latency of one exam
image) and batch 16 (throughput), in evaluation mode under ``torch.inference_mode``, interleaved
round by round so that load changes hit both alike. Figures: median latency per batch, per image,
images/s, and the multitask figure as a ratio to the segmentation-only one measured in the same
run. Writes ``benchmarks/results/inference_speed.json``.

    python benchmarks/inference_speed.py                 # 256x256, resnet18, CPU
    python benchmarks/inference_speed.py --quick         # 64x64, few repeats
    python benchmarks/inference_speed.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import FlexibleUNet

from thyroid_monai.networks import MultitaskUNet

from machine import describe_machine, write_result

RESULTS = Path(__file__).parent / "results" / "inference_speed.json"
BATCHES = (1, 16)


def networks(backbone: str, num_classes: int) -> dict[str, torch.nn.Module]:
    """The two networks compared, with random weights (speed does not depend on them)."""
    return {
        "segmentation_only": FlexibleUNet(
            in_channels=1, out_channels=2, backbone=backbone, pretrained=False, spatial_dims=2
        ),
        "multitask": MultitaskUNet(num_classes=num_classes, backbone=backbone),
    }


def median_seconds(
    network: torch.nn.Module, images: torch.Tensor, repeats: int, warmup: int
) -> list[float]:
    """Seconds of each of ``repeats`` forward passes after ``warmup`` untimed ones."""
    synchronise = images.device.type == "cuda"
    times = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            if synchronise:
                torch.cuda.synchronize(images.device)
            started = time.perf_counter()
            network(images)
            if synchronise:
                torch.cuda.synchronize(images.device)
            if index >= warmup:
                times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x64, 3 rounds")
    parser.add_argument("--size", type=int, help="image side (256; quick 64)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--rounds", type=int, help="timed rounds per batch size (10; quick 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    size = args.size or (64 if args.quick else 256)
    rounds = args.rounds or (3 if args.quick else 10)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    models = {name: net.to(device).eval() for name, net in networks(args.backbone, 5).items()}
    results: dict[str, Any] = {}
    for batch in BATCHES:
        images = torch.rand(batch, 1, size, size, device=device)
        timings: dict[str, list[float]] = {name: [] for name in models}
        for model in models.values():  # warm-up (allocator, kernels) outside the timing
            median_seconds(model, images, repeats=0, warmup=2)
        for _ in range(rounds):  # interleaved: one pass of each network per round
            for name, model in models.items():
                timings[name] += median_seconds(model, images, repeats=1, warmup=0)
        per_batch = {name: statistics.median(values) for name, values in timings.items()}
        results[f"batch_{batch}"] = {
            name: {
                "median_seconds_per_batch": round(seconds, 5),
                "milliseconds_per_image": round(1000 * seconds / batch, 3),
                "images_per_second": round(batch / seconds, 2),
            }
            for name, seconds in per_batch.items()
        }
        results[f"batch_{batch}"]["multitask_to_segmentation_time_ratio"] = round(
            per_batch["multitask"] / per_batch["segmentation_only"], 3
        )
    report = {
        "command": " ".join(
            ["python benchmarks/inference_speed.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "reference": "segmentation_only",
        "results": results,
        "parameters": {
            name: sum(p.numel() for p in model.parameters()) for name, model in models.items()
        },
        "settings": {
            "image_size": [size, size],
            "backbone": args.backbone,
            "rounds": rounds,
            "device": str(device),
            "batches": list(BATCHES),
        },
        "machine": describe_machine(
            torch_threads=args.threads,
            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            torch=torch.__version__,
        ),
    }
    write_result(args.out, report)
    return report


if __name__ == "__main__":
    main()
