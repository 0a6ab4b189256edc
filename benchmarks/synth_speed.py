"""Phantom speed on one core: rendering, full cases (readers and frame), and writing a dataset.

Images per second are reported for three stages, together with a floor measured in the same run:
drawing one correlated Rayleigh speckle field of the same size, the one step any B-mode simulator
must pay. The ratio to that floor is what to compare across machines.

    python benchmarks/synth_speed.py          # 200 images -> benchmarks/results/synth_speed.json
    python benchmarks/synth_speed.py --quick  # 40 images
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# One core: numerical libraries must not spread across threads.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np  # noqa: E402 - after the thread settings

from data_prep.phantom import write_phantom_dataset  # noqa: E402
from thyroid_monai.synthetic import Phantom, PhantomConfig  # noqa: E402
from thyroid_monai.synthetic.descriptors import (  # noqa: E402
    descriptor_table,
    resolve_class_mix,
    sample_descriptors,
)
from thyroid_monai.synthetic.render import RenderSettings, _speckle, render_image  # noqa: E402

from machine import describe_machine, write_result  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "synth_speed.json"


def best_rate(run: Callable[[], int], repeats: int) -> float:
    """Best images/s over ``repeats`` runs (the least disturbed by other load)."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - started))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 images instead of 200")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    count = 40 if args.quick else 200
    repeats = 3
    settings = RenderSettings(height=args.size, width=args.size)
    config = PhantomConfig(seed=0, readers=3, variability="moderate", render=settings)
    table, mix = descriptor_table(), resolve_class_mix("uniform")

    def speckle_only() -> int:
        rng = np.random.default_rng(0)
        for _ in range(count):
            _speckle(rng, (args.size, args.size), (0.7, 1.4))
        return count

    def render_only() -> int:
        for i in range(count):
            rng = np.random.default_rng(i)
            render_image(rng, sample_descriptors(rng, mix, table), settings)
        return count

    def full_cases() -> int:
        return sum(1 for _ in Phantom(config).cases(count))

    def write_dataset() -> int:
        with tempfile.TemporaryDirectory() as folder:
            write_phantom_dataset(folder, count, config, progress=False)
        return count

    render_only()  # warm-up: imports, caches
    floor = best_rate(speckle_only, repeats)
    stages = {
        "render": best_rate(render_only, repeats),
        "case_with_3_readers_and_frame": best_rate(full_cases, repeats),
        "write_nifti_dataset": best_rate(write_dataset, 1),
    }
    result = {
        "command": f"python benchmarks/synth_speed.py{' --quick' if args.quick else ''}",
        "image_size": [args.size, args.size],
        "images": count,
        "target_images_per_second": 50,
        "speckle_floor_images_per_second": round(floor, 1),
        "images_per_second": {k: round(v, 1) for k, v in stages.items()},
        "ratio_to_speckle_floor": {k: round(floor / v, 2) for k, v in stages.items()},
        "machine": describe_machine(numpy=np.__version__, threads=os.environ["OMP_NUM_THREADS"]),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
