"""Training-step time with glibc keeping freed memory mapped (``cpu_memory: keep``) or not.

The choice is process-wide, so each measurement is its own ``step_cost.py`` process (its steps
timed as there: round-robin, each configuration settled before it is timed), the two choices
alternating, ``--rounds`` times each. The figure is each configuration's median step time under
``keep`` as a ratio to ``system``, the allocator's defaults, measured in the same run.

    python benchmarks/cpu_memory.py                     # resnet18, 256 px, batch 8
    python benchmarks/cpu_memory.py --quick             # batch 2, 64 px
    python benchmarks/cpu_memory.py --methods camegrad  # which configurations (sum always)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from machine import describe_machine, write_result

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "cpu_memory.json"
CHOICES = ("system", "keep")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The options (``--quick``: batch 2, 64 px, 1 round)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", nargs="+", default=["floor", "camegrad"])
    parser.add_argument("--rounds", type=int, help="processes per choice (2, quick 1)")
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds in each process")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    return args


def step_seconds(args: argparse.Namespace, choice: str, scratch: Path) -> dict[str, float]:
    """Median step seconds per configuration from one ``step_cost.py`` process."""
    out = scratch / f"{choice}.json"
    command = [
        sys.executable,
        str(HERE / "step_cost.py"),
        *(["--quick"] if args.quick else []),
        "--methods",
        *args.methods,
        "--repeats",
        str(args.repeats),
        "--warmup",
        "1",
        "--threads",
        str(args.threads),
        "--cpu-memory",
        choice,
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds: dict[str, float] = json.loads(out.read_text())["median_step_seconds"]
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    measured: dict[str, dict[str, list[float]]] = {choice: {} for choice in CHOICES}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for choice in CHOICES:
                for name, seconds in step_seconds(args, choice, Path(scratch)).items():
                    measured[choice].setdefault(name, []).append(seconds)
    medians = {
        choice: {name: round(statistics.median(v), 4) for name, v in per_config.items()}
        for choice, per_config in measured.items()
    }
    result = {
        "command": " ".join(
            ["python benchmarks/cpu_memory.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "keep_over_system": {
            name: round(medians["keep"][name] / medians["system"][name], 3)
            for name in medians["system"]
            if name in medians["keep"]
        },
        "median_step_seconds": medians,
        "ratio_to_sum": {
            choice: {name: round(s / per[("sum")], 3) for name, s in per.items()}
            for choice, per in medians.items()
        },
        "settings": {"rounds": args.rounds, "repeats": args.repeats, "quick": args.quick},
        "machine": describe_machine(torch_threads=args.threads, torch=torch.__version__),
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
