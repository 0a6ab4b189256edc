"""The DDTI recipe: convert the public data set, train and evaluate every method per fold.

DDTI (Pedraza et al., SPIE 2015) cannot be downloaded at run time: fetch it yourself (the
``xml/`` and ``images/`` folders of the "Digital Database of Thyroid Ultrasound Images") and
pass its folder. The recipe is what a user would type by hand, in order:

1. ``thyroid-monai prep ddti --in DDTI --out WORK/data --folds K`` (patient-level folds and a
   held-out test split of patients; contours rasterised; Kwak TI-RADS labels; no spacing: DDTI
   images carry none, so HD95 is reported in pixels and no size is measured);
2. ``thyroid-monai prep targets --datalist WORK/data/datalist.json`` when a method uses the
   radiomics head;
3. per method and fold, ``python -m monai.bundle run`` of ``configs/train.yaml`` (overrides:
   ``tirads_scheme kwak``, ``label_grouping`` ``kwak6`` or ``binary``, the method's options) and
   then of ``train.yaml`` + ``evaluate.yaml`` on the test patients.

Scores are against the readers' labels (the only labels DDTI has). Tables like the accuracy
benchmark's go to ``benchmarks/results/ddti*.{md,csv}``, with the command above them; every run
is logged to the MLflow experiment ``benchmark_<name>`` as the accuracy benchmark logs its runs
(``--mlflow-uri``, ``--no-mlflow``).

    python benchmarks/ddti.py --ddti ~/data/DDTI --quick
    python benchmarks/ddti.py --ddti ~/data/DDTI --methods sum rlar camegrad --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accuracy import (
    DEFAULT_METHODS,
    METHODS,
    RESULTS,
    add_mlflow_options,
    benchmark_tracker,
    refuse_runs_trained_otherwise,
    write_csv,
)

READER_METRICS = {
    "dice": "val_mean_dice",
    "hd95_px": "val_hd95_px",
    "accuracy": "val_accuracy",
    "macro_f1": "val_macro_f1",
    "qwk": "val_qwk",
    "auc": "val_auc",
}
"""Table column -> the evaluation's score against the DDTI readers (``eval/metrics.csv``)."""


@dataclass(frozen=True)
class Recipe:
    """The scale of one DDTI run. ``QUICK`` is for a CPU; ``FULL`` follows the bundle defaults.

    Attributes:
        folds: Patient-level folds (every fold is trained).
        test_fraction: Patients held out for the test.
        epochs: Training epochs.
        image_size: Network input side.
        backbone: FlexibleUNet encoder.
        batch_size: Training batch size.
        label_grouping: ``kwak6`` (2, 3, 4a, 4b, 4c, 5) or ``binary`` (2-3 vs 4a-5).
        seeds: Training seeds.
        rlar_warmup_epochs: RLAR's warm-up.
    """

    folds: int
    test_fraction: float
    epochs: int
    image_size: int
    backbone: str
    batch_size: int
    label_grouping: str
    seeds: tuple[int, ...]
    rlar_warmup_epochs: int


QUICK = Recipe(
    folds=3, test_fraction=0.2, epochs=10, image_size=128, backbone="resnet18", batch_size=8,
    label_grouping="binary", seeds=(0,), rlar_warmup_epochs=2,
)  # fmt: skip
FULL = Recipe(
    folds=5, test_fraction=0.2, epochs=100, image_size=256, backbone="resnet18", batch_size=16,
    label_grouping="kwak6", seeds=(0, 1, 2), rlar_warmup_epochs=5,
)  # fmt: skip


def thyroid_monai_command(*arguments: str) -> None:
    """Runs ``thyroid-monai ...`` exactly as a user would, failing loudly."""
    command = [sys.executable, "-m", "thyroid_monai.cli", *arguments]
    print("$ thyroid-monai " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True)


def prepare(ddti: Path, work: Path, recipe: Recipe, radiomics: bool) -> Path:
    """Steps 1 and 2 of the recipe (skipped when already done)."""
    data = work / "data"
    datalist = data / "datalist.json"
    if not datalist.is_file():
        thyroid_monai_command("prep", "ddti", "--in", str(ddti), "--out", str(data),
                              "--folds", str(recipe.folds), "--test-fraction",
                              str(recipe.test_fraction), "--no-progress")  # fmt: skip
    if radiomics and "radiomics" not in json.loads(datalist.read_text()):
        thyroid_monai_command("prep", "targets", "--datalist", str(datalist), "--no-progress")
    return data


def bundle_overrides(method: str, recipe: Recipe, seed: int, fold: int, device: str) -> dict:
    """Step 3's overrides of one run."""
    return {
        "tirads_scheme": "kwak",
        "label_grouping": recipe.label_grouping,
        "fold": fold,
        "seed": seed,
        "max_epochs": recipe.epochs,
        "image_size": [recipe.image_size, recipe.image_size],
        "backbone": recipe.backbone,
        "batch_size": recipe.batch_size,
        "rlar#warmup_epochs": recipe.rlar_warmup_epochs,
        "log_iterations": False,
        "device": f"$torch.device('{device}')",
        **METHODS[method],
    }


def run_method(
    data: Path, run_dir: Path, overrides: Mapping[str, Any]
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Trains and evaluates one (method, seed, fold) through the bundle.

    Returns:
        The scores against the readers and the training's MLflow tags.
    """
    from thyroid_monai.tracking import RunRecord
    from thyroid_monai.workflows import read_metrics_csv, run_bundle

    training = run_bundle(["train.yaml"], run_dir=run_dir, dataset_dir=data, tracking=False,
                          quiet=True, overrides=dict(overrides))  # fmt: skip
    tags = RunRecord.from_config(training.parser).tags()
    run_bundle(["train.yaml", "evaluate.yaml"], run_dir=run_dir, dataset_dir=data,
               tracking=False, quiet=True, overrides=dict(overrides))  # fmt: skip
    metrics = read_metrics_csv(run_dir / "eval" / "metrics.csv")
    return {name: metrics.get(key) for name, key in READER_METRICS.items()}, tags


def summary_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation per method over folds and seeds."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in records):
        group = [r for r in records if r["method"] == method]
        row: dict[str, Any] = {"method": method, "runs": len(group)}
        for metric in READER_METRICS:
            values = [r[metric] for r in group if r[metric] is not None]
            row[f"{metric}_mean"] = round(statistics.fmean(values), 4) if values else None
            row[f"{metric}_std"] = (
                round(statistics.stdev(values), 4) if len(values) > 1 else 0.0 if values else None
            )
        rows.append(row)
    return rows


def markdown(command: str, recipe: Recipe, rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary table with the command that produced it."""
    lines = [
        "# DDTI: every method per fold (scores against the DDTI readers)",
        "",
        f"Produced by: `{command}`",
        "",
        f"Recipe: {json.dumps(asdict(recipe))}. Mean ± standard deviation over folds and seeds.",
        "",
        "| method | runs | " + " | ".join(READER_METRICS) + " |",
        "|---|---|" + "---|" * len(READER_METRICS),
    ]
    for row in rows:
        cells = [
            "n/a" if row[f"{m}_mean"] is None else f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"
            for m in READER_METRICS
        ]
        lines.append(f"| {row['method']} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddti", type=Path, required=True, help="DDTI folder (xml/, images/)")
    parser.add_argument("--quick", action="store_true", help="the CPU recipe (see QUICK)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=list(DEFAULT_METHODS))  # fmt: skip
    parser.add_argument("--folds", type=int, help="override the recipe's folds")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--image-size", type=int, help="override the recipe's input size")
    parser.add_argument("--test-fraction", type=float, help="override the held-out fraction")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, help="data and runs (default benchmarks/.work/...)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="result file stem (ddti or ddti_quick)")
    add_mlflow_options(parser)
    args = parser.parse_args(argv)
    if not (args.ddti / "xml").is_dir() or not (args.ddti / "images").is_dir():
        parser.error(f"{args.ddti} is not a DDTI folder: it needs xml/ and images/")
    recipe = QUICK if args.quick else FULL
    changes = {"folds": args.folds, "epochs": args.epochs, "image_size": args.image_size,
               "test_fraction": args.test_fraction}  # fmt: skip
    recipe = Recipe(**{**asdict(recipe), **{k: v for k, v in changes.items() if v is not None}})
    name = args.name or ("ddti_quick" if args.quick else "ddti")
    work = args.work or Path(__file__).parent / ".work" / name
    command = " ".join(["python benchmarks/ddti.py", *(sys.argv[1:] if argv is None else argv)])
    data = prepare(
        args.ddti, work, recipe, any(METHODS[m].get("use_radiomics") for m in args.methods)
    )
    tracker = benchmark_tracker(args, work, name)
    started, records = time.perf_counter(), []
    runs = [(method, seed, fold, work / "runs" / method / f"seed{seed}_fold{fold}",
             bundle_overrides(method, recipe, seed, fold, args.device))
            for seed in recipe.seeds for fold in range(recipe.folds)
            for method in args.methods]  # fmt: skip
    refuse_runs_trained_otherwise(
        [(run_dir, o) for *_, run_dir, o in runs if (run_dir / "scores.json").is_file()], work
    )
    for method, seed, fold, run_dir, overrides in runs:
        saved = run_dir / "scores.json"
        if not saved.is_file():
            scores, tags = run_method(data, run_dir, overrides)
            saved.write_text(json.dumps({**scores, "tags": tags}) + "\n")
        scores = json.loads(saved.read_text())
        tags = scores.pop("tags", {})  # runs saved before the tags were kept have none
        records.append({"method": method, "seed": seed, "fold": fold, **scores})
        if tracker is not None:
            tracker.log_run(
                f"{method}/seed{seed}/fold{fold}", method=method, training_tags=tags,
                tags={"seed": str(seed)}, test_scores=scores, metrics={},
                description=f"{name}: {method} on DDTI, seed {seed}, fold {fold}; scores "
                "on the held-out test patients against the DDTI readers",
                params=overrides, datalist=data / "datalist.json", fold=fold,
            )  # fmt: skip
    rows = summary_rows(records)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / f"{name}_runs.csv", records, command)
    write_csv(args.out / f"{name}.csv", rows, command)
    (args.out / f"{name}.md").write_text(markdown(command, recipe, rows))
    print((args.out / f"{name}.md").read_text())
    print(f"{len(records)} runs in {time.perf_counter() - started:.0f} s (runs on disk reused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
