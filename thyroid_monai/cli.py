"""The ``thyroid-monai`` command.

Subcommands:
    synth   render a phantom dataset (NIfTI + datalist) and/or a labelled preview grid
    demo    synthesise, train through the bundle, evaluate on held-out patients, print results
    sync    replay tracking records kept locally while the MLflow server was unreachable
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from thyroid_monai.tirads import ACR_LEVELS

if TYPE_CHECKING:  # heavy imports happen inside the subcommands, so `--help` stays fast
    from thyroid_monai.synthetic import PhantomConfig


def _class_mix(text: str) -> str | dict[str, float]:
    """``uniform``/``clinical`` or ``TR1=1,TR2=1,...``."""
    if "=" not in text:
        return text
    mix = {}
    for part in text.split(","):
        level, _, weight = part.partition("=")
        mix[level.strip().upper()] = float(weight)
    return mix


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="render a phantom dataset and/or a preview grid",
        description="Render synthetic thyroid ultrasound images with known ACR descriptors, known "
        "level and simulated readers; write NIfTI images and masks and a MONAI datalist.",
    )
    parser.add_argument("--out", type=Path, help="output folder for the dataset")
    parser.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--readers", type=int, default=3, help="simulated readers per image")
    parser.add_argument(
        "--variability",
        default="moderate",
        choices=["none", "moderate", "strong"],
        help="amount of reader disagreement",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--class-mix",
        type=_class_mix,
        default="uniform",
        help="'uniform', 'clinical' or weights like TR1=1,TR2=2,... "
        f"(levels {', '.join(ACR_LEVELS)})",
    )
    parser.add_argument("--images-per-patient", type=int, default=2, help="views of each nodule")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("ROWS", "COLS"))
    parser.add_argument("--folds", type=int, default=5, help="patient-level folds")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out patients")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--preview", type=Path, help="write a labelled PNG grid with contours")
    parser.add_argument("--preview-count", type=int, default=16, help="images in the preview")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=_run_synth)


def _phantom_config(args: argparse.Namespace) -> PhantomConfig:
    from thyroid_monai.synthetic import PhantomConfig, RenderSettings

    return PhantomConfig(
        seed=args.seed,
        readers=args.readers,
        variability=args.variability,
        class_mix=args.class_mix,
        images_per_patient=args.images_per_patient,
        render=RenderSettings(height=args.size[0], width=args.size[1]),
    )


def _run_synth(args: argparse.Namespace) -> int:
    from data_prep.phantom import write_phantom_dataset
    from thyroid_monai.synthetic import Phantom, save_preview_grid

    if args.out is None and args.preview is None:
        print("synth: give --out DIR (dataset) and/or --preview PNG", file=sys.stderr)
        return 2
    config = _phantom_config(args)
    if args.preview is not None:
        count = min(args.preview_count, args.n)
        path = save_preview_grid(list(Phantom(config).cases(count)), args.preview)
        print(f"preview: {path}")
    if args.out is not None:
        started = time.perf_counter()
        datalist = write_phantom_dataset(
            args.out,
            args.n,
            config,
            folds=args.folds,
            test_fraction=args.test_fraction,
            workers=args.workers,
            progress=not args.no_progress,
        )
        elapsed = time.perf_counter() - started
        print(f"datalist: {datalist} ({args.n} images in {elapsed:.1f} s)")
    return 0


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthesise, train, evaluate and show where the MLflow run is",
        description="The main job: a phantom dataset, a few epochs of multitask training through "
        "the MONAI bundle (tracked in MLflow), evaluation on held-out patients.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    parser.add_argument("--n", type=int, default=240, help="phantom images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128, help="network input size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="phantom rendering processes")
    parser.set_defaults(handler=_run_demo)


def _synthesise_once(data_dir: Path, count: int, config: PhantomConfig, workers: int) -> Path:
    """Writes the phantom unless the same dataset is already there (it would be byte-identical)."""
    from data_prep.phantom import write_phantom_dataset

    datalist = data_dir / "datalist.json"
    if datalist.is_file():
        existing = json.loads(datalist.read_text())
        same_config = existing.get("phantom") == json.loads(json.dumps(config.to_dict()))
        if same_config and existing.get("numTraining", 0) + existing.get("numTest", 0) == count:
            print(f"phantom: reusing {datalist}")
            return datalist
    return write_phantom_dataset(data_dir, count, config, workers=workers)


def _run_demo(args: argparse.Namespace) -> int:
    import mlflow

    from thyroid_monai.synthetic import PhantomConfig
    from thyroid_monai.workflows import read_metrics_csv, run_bundle, sqlite_uri, tracking_store

    started = time.perf_counter()
    run_dir: Path = args.out
    data_dir = run_dir / "data"
    print(f"[1/3] phantom: {args.n} images, 3 readers, moderate variability -> {data_dir}")
    _synthesise_once(data_dir, args.n, PhantomConfig(seed=args.seed), args.workers)

    run_name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.rmtree(run_dir / "models", ignore_errors=True)  # checkpoints of an earlier demo
    common = {
        "image_size": [args.image_size, args.image_size],
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    print(f"[2/3] training {args.epochs} epochs through the bundle (MLflow run '{run_name}')")
    run_bundle(
        ["train.yaml", "progress.yaml"],
        run_dir=run_dir,
        dataset_dir=data_dir,
        quiet=True,
        overrides={**common, "max_epochs": args.epochs, "run_name": run_name},
    )
    print("[3/3] evaluating the best checkpoint on the held-out test patients")
    run_bundle(
        ["train.yaml", "evaluate.yaml"],
        run_dir=run_dir,
        dataset_dir=data_dir,
        tracking=False,
        quiet=True,
        overrides=common,
    )
    metrics = read_metrics_csv(run_dir / "eval" / "metrics.csv")

    store = tracking_store(run_dir)
    client = mlflow.MlflowClient(sqlite_uri(store))
    experiment = client.get_experiment_by_name("thyroid_us_multitask")
    if experiment is None:
        raise RuntimeError(f"the training run left no MLflow experiment in {store}")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'"
    )
    for name, value in metrics.items():
        client.log_metric(runs[0].info.run_id, name.replace("val_", "test_"), value)

    datalist = json.loads((data_dir / "datalist.json").read_text())
    patients = len({item["patient"] for item in datalist["testing"]})
    rows: list[tuple[str, float | None]] = [
        ("Dice (nodule mask)", metrics.get("val_mean_dice")),
        ("TI-RADS accuracy (TR1-TR5)", metrics.get("val_accuracy")),
        ("TI-RADS macro-F1", metrics.get("val_macro_f1")),
    ]
    print()
    print(f"Held-out test set: {datalist['numTest']} images of {patients} patients")
    print(f"  {'metric':<30}{'value':>8}")
    for label, score in rows:
        print(f"  {label:<30}{score:>8.3f}" if score is not None else f"  {label:<30}{'n/a':>8}")
    print(f"  (chance level for 5 balanced classes is 0.200; {args.epochs} epochs on a CPU)")
    print()
    print(f"MLflow run '{run_name}' (params, per-epoch losses and metrics, checkpoint):")
    print(f"  mlflow ui --backend-store-uri {sqlite_uri(store)} --port 5000")
    print(f"Done in {time.perf_counter() - started:.0f} s.")
    return 0


def _add_sync(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sync",
        help="replay tracking records kept locally during a server outage",
        description="Replay the runs of an offline tracking store (written while the MLflow "
        "server was unreachable) onto the server. Safe to run twice: nothing is duplicated.",
    )
    parser.add_argument("store", type=Path, help="the fallback folder, e.g. runs/x/eval/offline")
    parser.add_argument("--to", help="tracking server URI (default: the one recorded, then env)")
    parser.set_defaults(handler=_run_sync)


def _run_sync(args: argparse.Namespace) -> int:
    from thyroid_monai.offline_tracking import sync_offline_store

    report = sync_offline_store(args.store, args.to)
    print(report.summary())
    for key in report.skipped_params:
        print(f"  param '{key}' differs on the server and was kept there (params are immutable)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``thyroid-monai``."""
    parser = argparse.ArgumentParser(
        prog="thyroid-monai",
        description="MONAI-based thyroid ultrasound pipeline: nodule mask and ACR TI-RADS level.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_synth(subparsers)
    _add_demo(subparsers)
    _add_sync(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thyroid-monai`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
