"""Accuracy under reader variability: every training method against the phantom's truth.

For each reader-variability preset (``none``, ``moderate``, ``strong``) a phantom dataset is
written once (patient-level folds plus a held-out test split of patients). Every method is then
trained through the MONAI bundle (``configs/train.yaml``, checkpoint selected on the fold's
validation patients), and its best checkpoint is evaluated through ``configs/evaluate.yaml`` on the
held-out test patients. Training uses the readers' consensus labels, as a real team would; scores
are computed against the phantom's *true* mask and level, which a real data set never has.

Methods (name -> what changes from ``train.yaml``):

* ``mask_only`` / ``level_only``: single-task baselines (``use_level`` / ``use_mask`` false);
* ``sum``: multitask, weighted sum of the task losses (the reference);
* ``sum_radiomics``: + the radiomics-guided embedding (``use_radiomics``);
* ``rlar``: + radiomics + the RLAR regulariser (``use_rlar``; RLAR's warm-up scaled to the run);
* ``camegrad``, ``pcgrad``, ``cagrad``, ``uncertainty``, ``gradnorm``: gradient methods on the
  multitask model (``gradient_method#name``).

Every (variability, method, seed, fold) run writes its scores to ``<work>/runs/.../scores.json``
and is skipped when that file exists, so an interrupted benchmark resumes where it stopped. A
finished run is reused only if the config it recorded (``configs/train.json``) has the overrides
this invocation would train it with; a work folder whose runs or dataset were made with other
settings is refused with the runs and what differs.

Outputs in ``benchmarks/results/`` (``accuracy_quick*`` with ``--quick``): per-run CSV, summary
CSV and Markdown (mean and standard deviation per variability and method; paired comparisons per
fold and seed of RLAR against the weighted sum and against the same model without RLAR, and of
CAME-Grad against the sum and CAGrad; whether the RLAR penalty was active), and a PNG plot. Each
table says above it the command that produced it.

Every run is also logged to MLflow, one experiment per study (``benchmark_<name>``, e.g.
``benchmark_accuracy_quick``): the test scores as metrics (``test_dice``, ``test_macro_f1``...),
the bundle overrides as params, the tags of a tracked training (``method`` is the benchmark's
method name, ``gradient_method`` the gradient method's) plus ``study``, ``variability``, ``seed``
and ``fold``, a one-line description, and the run's training and test splits as MLflow datasets.
MLflow's compare view then sets RLAR against the sum run by run. The store is
``<work>/mlruns.db`` unless ``--mlflow-uri`` names another (a team server); ``--no-mlflow`` logs
nothing. A run already in the experiment is not logged twice.

    python benchmarks/accuracy.py --quick --jobs 2  # the CPU settings (about 1 hour on 2 cores)
    python benchmarks/accuracy.py --device cuda  # the full settings, for a GPU
    python benchmarks/accuracy.py --quick --methods sum rlar --variability strong
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thyroid_monai.synthetic import PhantomConfig

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
PAIRS = (
    ("rlar", "sum"), ("rlar", "sum_radiomics"), ("rlar_tau0", "sum_radiomics"),
    ("rlar_pooled", "sum_radiomics"), ("rlar_every1", "rlar"), ("rlar_first", "rlar"),
    ("camegrad", "sum"), ("camegrad", "cagrad"), ("camegrad_representation", "camegrad"),
)  # fmt: skip
"""Paired comparisons (challenger, reference): RLAR against the weighted sum (the paper's claim)
and against the same model without the regulariser (RLAR's own share), CAME-Grad against the sum
and against CAGrad (its rectification's origin), and CAME-Grad at the representation against
CAME-Grad at the parameters (what the cheaper approximation costs)."""
VARIABILITIES = ("none", "moderate", "strong")
METRICS = ("dice", "hd95_mm", "macro_f1", "qwk", "auc")
"""The scores compared, all against the phantom's truth."""
HIGHER_IS_BETTER = {"dice": True, "hd95_mm": False, "macro_f1": True, "qwk": True, "auc": True}
MISSED_DICE = 0.1
"""A run whose test Dice is below this never learned to find the nodule (counted as missed)."""
FIRST_RLAR = {"use_radiomics": True, "use_rlar": True, "rlar#latent": "deepest", "rlar#power": 2.0,
              "rlar#weight": 0.05, "rlar#every": 1}  # fmt: skip
"""RLAR's first reconstruction (papers.md 1.2), which never acted (its issue's measurements)."""
METHODS: dict[str, dict[str, Any]] = {
    "mask_only": {"use_level": False},
    "level_only": {"use_mask": False},
    "sum": {},
    "sum_radiomics": {"use_radiomics": True},
    "rlar": {"use_radiomics": True, "use_rlar": True},
    "camegrad": {"gradient_method#name": "camegrad"},
    "pcgrad": {"gradient_method#name": "pcgrad"},
    "cagrad": {"gradient_method#name": "cagrad"},
    "uncertainty": {"gradient_method#name": "uncertainty"},
    "gradnorm": {"gradient_method#name": "gradnorm"},
    # RLAR variants, not in the default list: the smallest margin papers.md suggests (tau 0), and
    # the cosine of spatially averaged gradients (per-channel directions) at the default margin
    # (these two were measured with the first reconstruction's options, kept explicit here)
    "rlar_tau0": {**FIRST_RLAR, "rlar#tau": 0.0},
    "rlar_pooled": {**FIRST_RLAR, "rlar#latent": "pooled"},
    # RLAR as first reconstructed (squared hinge at the deepest map, weight 0.05, every step),
    # and today's default applied at every step instead of every 4th (the lazy schedule's cost
    # saving, measured)
    "rlar_first": FIRST_RLAR,
    "rlar_every1": {"use_radiomics": True, "use_rlar": True, "rlar#every": 1},
    # The level pathway's ablation (docs/level.md), not in the default list: what the level head
    # reads and where the level comes from, everything else as train.yaml.
    "level_global": {"network_def#level_pooling": "global", "train#trainer#level_guide_epochs": 0,
                     "use_descriptors": False, "tasks#level_from": "direct"},
    "level_nodule": {"network_def#level_pooling": "nodule", "train#trainer#level_guide_epochs": 0,
                     "use_descriptors": False, "tasks#level_from": "direct"},
    "level_nodule_guided": {"network_def#level_pooling": "nodule", "use_descriptors": False,
                            "tasks#level_from": "direct"},
    "level_acr_points": {"network_def#level_pooling": "nodule", "use_descriptors": True,
                         "tasks#level_from": "acr_points"},
    "level_both": {"network_def#level_pooling": "nodule", "use_descriptors": True,
                   "tasks#level_from": "both"},
    # The default model, checkpoint chosen by the mean of Dice and macro-F1 instead of Dice; the
    # level's loss weighted twice the mask's.
    "level_joint_selection": {"tasks#selection": "joint"},
    "level_weight2": {"tasks#weights": {"cls": 2.0}},
    # Ordinal level heads (networks/heads.py) trained with the CORAL loss on cumulative logits.
    "level_coral": {"network_def#level_head": "coral", "loss#level_loss": "coral"},
    "level_cumulative_link": {"network_def#level_head": "cumulative_link",
                              "loss#level_loss": "coral"},
    # The default level (direct) with the five descriptor heads trained beside it on the same
    # embedding: the descriptors as auxiliary supervision, not as the level's route
    "level_descriptors": {"use_descriptors": True, "tasks#level_from": "direct"},
    # The default model with the ordinal term on the level cross-entropy (losses.py), two weights
    "level_ordinal": {"loss#level_ordinal_weight": 1.0},
    "level_ordinal4": {"loss#level_ordinal_weight": 4.0},
    # The default model reading the rendered 128-pixel image folded into 4 channels at 64x64
    # (networks/multitask.py, space_to_depth): the encoder's grid of the 64-pixel input, every
    # rendered pixel at full contrast
    "level_space_to_depth": {"network_def#space_to_depth": 2, "image_size": [128, 128]},
    # CAME-Grad aggregating the gradients at the encoder's output maps (thyroid_monai.mtl.base)
    "camegrad_representation": {"gradient_method#name": "camegrad",
                                "gradient_method#aggregate_at": "representation"},
}  # fmt: skip
"""Bundle overrides of each method over ``train.yaml``."""
ABLATIONS = ("rlar_tau0", "rlar_pooled", "rlar_every1", "rlar_first", "level_global",
             "level_nodule", "level_nodule_guided",
             "level_acr_points", "level_both", "level_joint_selection",
             "level_weight2", "level_coral", "level_cumulative_link", "level_ordinal",
             "level_ordinal4", "level_descriptors", "level_space_to_depth",
             "camegrad_representation")  # fmt: skip
DEFAULT_METHODS = tuple(name for name in METHODS if name not in ABLATIONS)
"""The methods the issue compares (``--methods`` picks others)."""


@dataclass(frozen=True)
class Settings:
    """One benchmark's scale. ``QUICK`` fits a 2-core CPU in about an hour; ``FULL`` is for a GPU.

    Attributes:
        images: Phantom images per variability (3 views per patient).
        render_size: Rendered image side (pixels) before resizing to ``image_size``.
        image_size: Network input side.
        epochs: Training epochs per run.
        folds: Patient-level folds (K); every fold is run.
        seeds: Training seeds.
        backbone: FlexibleUNet encoder.
        batch_size: Training batch size.
        rlar_warmup_epochs: RLAR's warm-up (papers.md: 5 of 100 epochs; scaled for short runs).
        test_fraction: Share of the patients held out for the test.
        readers: Phantom readers whose consensus trains the runs.
        variabilities: Reader-variability presets, a phantom dataset each.
    """

    images: int
    render_size: int
    image_size: int
    epochs: int
    folds: int
    seeds: tuple[int, ...]
    backbone: str
    batch_size: int
    rlar_warmup_epochs: int
    test_fraction: float = 0.2
    readers: int = 3
    variabilities: tuple[str, ...] = VARIABILITIES


QUICK = Settings(
    images=1200, render_size=128, image_size=64, epochs=12, folds=2, seeds=(0,),
    backbone="resnet10", batch_size=8, rlar_warmup_epochs=1, variabilities=("none", "strong"),
)  # fmt: skip
"""240 images and 6 epochs (the settings before the level pathway) left every method's level
at chance; 1200 images and 12 epochs learn it (docs/level.md), at 3-4 minutes a run on one
thread. The whole table (10 methods x 2 variabilities x 2 folds, one seed) is then about an hour
on 2 cores; ``--seeds 0 1 2`` and ``--variability none moderate strong`` give the spread and
the middle preset (three times the runs)."""
FULL = Settings(
    images=900, render_size=256, image_size=256, epochs=60, folds=5, seeds=(0, 1, 2),
    backbone="resnet18", batch_size=16, rlar_warmup_epochs=5,
)  # fmt: skip


@dataclass
class RunScores:
    """The test scores of one trained run (``None`` where the task was not trained)."""

    variability: str
    method: str
    seed: int
    fold: int
    scores: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    diagnostics: dict[str, float] = field(default_factory=dict)
    """The trainer's last-epoch means of the RLAR cosines (``rlar_cos_mean``, ...), if any."""
    tags: dict[str, str] = field(default_factory=dict)
    """The training's MLflow tags (:class:`thyroid_monai.tracking.RunRecord`)."""


def phantom_config(variability: str, settings: Settings) -> PhantomConfig:
    """The phantom that :func:`dataset` renders (the level ceilings sample the same one)."""
    from thyroid_monai.synthetic import PhantomConfig, RenderSettings

    return PhantomConfig(
        seed=0,
        readers=settings.readers,
        variability=variability,
        render=RenderSettings(height=settings.render_size, width=settings.render_size),
    )


def dataset(root: Path, variability: str, settings: Settings, radiomics: bool) -> Path:
    """Writes (once) the phantom dataset of one variability preset; returns its folder."""
    from data_prep.phantom import write_phantom_dataset

    folder = root / f"data_{variability}"
    datalist = folder / "datalist.json"
    if not datalist.is_file():
        write_phantom_dataset(
            folder,
            settings.images,
            phantom_config(variability, settings),
            folds=settings.folds,
            test_fraction=settings.test_fraction,
            progress=False,
        )
    written = json.loads(datalist.read_text())
    # A work folder is reused across invocations: a dataset written for other settings would
    # silently give other data (and the runs trained on it would be reused as if they were these).
    differences = dataset_differences(written, variability, settings)
    if differences:
        raise ValueError(
            f"{datalist} was written for other settings ({'; '.join(differences)}): "
            "use another --work folder (or --name) for these"
        )
    if radiomics and "radiomics" not in written:
        from data_prep.targets import write_radiomics_targets

        # Statistics come from the training items (every fold); the test patients stay unseen.
        write_radiomics_targets(datalist, progress=False)
    return folder


def dataset_differences(written: dict, variability: str, settings: Settings) -> list[str]:
    """How a written phantom datalist differs from what ``settings`` would write (empty: same)."""
    wanted = {
        "folds": settings.folds,
        "images": settings.images,
        # through JSON, as the datalist recorded it (tuples become lists)
        "phantom": json.loads(json.dumps(phantom_config(variability, settings).to_dict())),
    }
    found = {
        "folds": written.get("folds"),
        "images": len(written.get("training", [])) + len(written.get("testing", [])),
        "phantom": written.get("phantom"),
    }
    return [
        f"{key} {found[key]} instead of {wanted[key]}" if key != "phantom" else "another phantom"
        for key in wanted
        if found[key] != wanted[key]
    ]


TRUTH_METRICS = {
    "dice": "val_mean_dice_truth",
    "hd95_mm": "val_hd95_mm_truth",
    "macro_f1": "val_macro_f1_truth",
    "qwk": "val_qwk_truth",
    "auc": "val_auc_truth",
}
"""Benchmark metric -> the evaluation's score against the phantom's truth (``eval/metrics.csv``)."""


def truth_scores(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """The scores against the phantom's truth; ``None`` for a task the run did not train."""
    scores: dict[str, float | None] = {}
    for name, key in TRUTH_METRICS.items():
        value = metrics.get(key)
        scores[name] = None if value is None or not math.isfinite(value) else float(value)
    return scores


RLAR_DIAGNOSTICS = ("rlar_cos_mean", "rlar_cos_max", "rlar_excess_share")
"""The trainer's epoch means that say whether the RLAR penalty was active."""


def train_and_evaluate(
    data_dir: Path, run_dir: Path, overrides: Mapping[str, Any]
) -> tuple[dict[str, float | None], dict[str, float], dict[str, str]]:
    """Trains one configuration through the bundle and scores its best checkpoint on the test.

    Returns:
        The truth scores, the RLAR diagnostics of the last training epoch (empty without
        RLAR), and the training's MLflow tags.
    """
    from thyroid_monai.tracking import RunRecord
    from thyroid_monai.workflows import read_metrics_csv, run_bundle

    training = run_bundle(["train.yaml"], run_dir=run_dir, dataset_dir=data_dir, tracking=False,
                          quiet=True, overrides=dict(overrides))  # fmt: skip
    epoch_means = training.parser.get_parsed_content("train#trainer").state.metrics
    diagnostics = {
        name: float(epoch_means[f"train_{name}"])
        for name in RLAR_DIAGNOSTICS
        if f"train_{name}" in epoch_means
    }
    tags = RunRecord.from_config(training.parser).tags()
    run_bundle(["train.yaml", "evaluate.yaml"], run_dir=run_dir, dataset_dir=data_dir,
               tracking=False, quiet=True, overrides=dict(overrides))  # fmt: skip
    scores = truth_scores(read_metrics_csv(run_dir / "eval" / "metrics.csv"))
    return scores, diagnostics, tags


def run_overrides(method: str, settings: Settings, seed: int, fold: int, device: str) -> dict:
    """The bundle overrides of one run."""
    return {
        "fold": fold,
        "seed": seed,
        "max_epochs": settings.epochs,
        "image_size": [settings.image_size, settings.image_size],
        "backbone": settings.backbone,
        "batch_size": settings.batch_size,
        "rlar#warmup_epochs": settings.rlar_warmup_epochs,
        "log_iterations": False,
        "log_epochs": False,
        "device": f"$torch.device('{device}')",
        **METHODS[method],
    }


class BenchmarkTracker:
    """Logs the benchmark's runs to one MLflow experiment per study (see the module docstring).

    Args:
        uri: Tracking URI (``sqlite:///...`` or a server).
        study: The study's name (the result file stem); the experiment is ``benchmark_<study>``.
        device: The device the runs trained on (a tag).
    """

    def __init__(self, uri: str, study: str, device: str):
        import mlflow

        self.client = mlflow.MlflowClient(uri)
        self.study = study
        self.device = device
        name = f"benchmark_{study}"
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )

    def _logged(self, key: str) -> bool:
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.benchmark_run = '{key}'", max_results=1
        )
        return bool(found)

    def log(self, record: RunScores, data_dir: Path, settings: Settings) -> None:
        """Logs one finished run of this benchmark (see :meth:`log_run`)."""
        key = f"{record.variability}/{record.method}/seed{record.seed}/fold{record.fold}"
        description = (
            f"{self.study}: {record.method} on {record.variability} reader variability, seed "
            f"{record.seed}, fold {record.fold}; {record.tags.get('tasks', '?')} at "
            f"{record.tags.get('image_size', '?')} px with {record.tags.get('backbone', '?')}; "
            "scores on the held-out test patients against the phantom's truth"
        )
        self.log_run(
            key, method=record.method, training_tags=record.tags,
            tags={"variability": record.variability, "seed": str(record.seed)},
            description=description,
            test_scores=record.scores,
            metrics={**record.diagnostics, "run_seconds": record.seconds},
            params=run_overrides(record.method, settings, record.seed, record.fold, self.device),
            datalist=data_dir / "datalist.json", fold=record.fold,
        )  # fmt: skip

    def log_run(
        self,
        key: str,
        *,
        method: str,
        training_tags: Mapping[str, str],
        tags: Mapping[str, str],
        description: str,
        test_scores: Mapping[str, float | None],
        metrics: Mapping[str, float],
        params: Mapping[str, Any],
        datalist: Path,
        fold: int,
    ) -> None:
        """Logs one run unless the experiment holds it (its ``benchmark_run`` tag is ``key``).

        Args:
            key: The run's identity in the study (``<variability>/<method>/seed<s>/fold<f>``).
            method: The benchmark's method name (the ``method`` tag).
            training_tags: The training's tags (its ``method`` becomes ``gradient_method``).
            tags: More tags (variability, seed...).
            description: The run's one-line description.
            test_scores: The test scores, logged as ``test_<name>`` (``None``: not trained).
            metrics: Other metrics (``run_seconds``, RLAR diagnostics), as they are.
            params: The bundle overrides of the run.
            datalist: The datalist; its fold's training split and the test split are logged.
            fold: The run's validation fold.
        """
        from mlflow.entities import Metric, Param, RunTag

        from thyroid_monai.tracking import datalist_lineage, dataset_input, param_value
        from thyroid_monai.tracking.lineage import DESCRIPTION_TAG

        if self._logged(key):
            return
        every_tag = {**training_tags, "gradient_method": training_tags.get("method", "unknown"),
                     "method": method, "study": self.study, "benchmark_run": key,
                     "fold": str(fold), "device": self.device, **tags,
                     DESCRIPTION_TAG: description}  # fmt: skip
        now = int(time.time() * 1000)
        logged = {f"test_{k}": v for k, v in test_scores.items() if v is not None} | dict(metrics)
        batch = [Metric(name, float(value), now, 0) for name, value in logged.items()]
        run = self.client.create_run(self.experiment_id, run_name=key.replace("/", "_"))
        run_id = run.info.run_id
        self.client.log_batch(
            run_id, metrics=batch,
            params=[Param(k.replace("#", "."), param_value(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in every_tag.items()],
        )  # fmt: skip
        self.client.log_inputs(run_id, datasets=[
            dataset_input(datalist_lineage(datalist, "train", fold)),
            dataset_input(datalist_lineage(datalist, "test")),
        ])  # fmt: skip
        self.client.set_terminated(run_id)


def add_mlflow_options(parser: argparse.ArgumentParser) -> None:
    """``--mlflow-uri`` and ``--no-mlflow`` (the benchmarks' MLflow logging)."""
    parser.add_argument("--mlflow-uri", help="MLflow store or server the runs are logged to "
                        "(default: sqlite:///<work>/mlruns.db)")  # fmt: skip
    parser.add_argument("--no-mlflow", action="store_true", help="log no run to MLflow")


def benchmark_tracker(args: argparse.Namespace, work: Path, study: str) -> BenchmarkTracker | None:
    """The study's tracker from the options of :func:`add_mlflow_options` (None: no logging)."""
    if args.no_mlflow:
        return None
    work.mkdir(parents=True, exist_ok=True)
    uri = args.mlflow_uri or f"sqlite:///{(work / 'mlruns.db').resolve()}"
    print(f"MLflow: experiment benchmark_{study} in {uri}")
    return BenchmarkTracker(uri, study, args.device)


def run_all(
    work: Path,
    settings: Settings,
    methods: Sequence[str],
    variabilities: Sequence[str],
    device: str,
    jobs: int = 1,
    threads: int | None = None,
    folds: Sequence[int] | None = None,
    tracker: BenchmarkTracker | None = None,
) -> list[RunScores]:
    """Every run, resuming from the scores already on disk.

    Args:
        work: Data and run folders.
        settings: The benchmark's scale.
        methods: Method names (keys of ``METHODS``).
        variabilities: Reader-variability presets.
        device: Torch device of every run.
        jobs: Runs trained at once, each in its own process. On a CPU, two single-threaded runs
            finish a small network's epochs sooner than one run on two threads.
        threads: Torch threads per run (default: the cores shared among the jobs). Scores
            depend slightly on it (floating-point summation order), so the tables record it.
        folds: The folds to run (default: every fold of the settings), for a quicker probe.
        tracker: Logs every run (new or from disk) to the study's MLflow experiment.
    """
    needs_radiomics = any(METHODS[m].get("use_radiomics") for m in methods)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    data_dirs = {v: dataset(work, v, settings, needs_radiomics) for v in variabilities}
    every_run = [
        (variability, method, seed, fold)
        for variability in variabilities
        for seed in settings.seeds
        for fold in (folds if folds is not None else range(settings.folds))
        for method in methods
    ]
    pending: list[tuple[str, str, int, int, Path]] = []
    records: list[RunScores] = []
    reused: list[tuple[Path, dict]] = []
    for variability, method, seed, fold in every_run:
        run_dir = run_folder(work, variability, method, seed, fold)
        if (run_dir / "scores.json").is_file():
            reused.append((run_dir, run_overrides(method, settings, seed, fold, device)))
            records.append(RunScores(**json.loads((run_dir / "scores.json").read_text())))
        else:
            pending.append((variability, method, seed, fold, data_dirs[variability]))
    refuse_runs_trained_otherwise(reused, work)
    total = len(records) + len(pending)
    arguments = [
        (work, settings, variability, method, seed, fold, data_dir, device, threads)
        for variability, method, seed, fold, data_dir in pending
    ]
    if jobs <= 1:
        torch_threads(threads)
        finished: Iterable[RunScores] = (one_run(*a) for a in arguments)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a forked child would inherit the parent's torch thread pools
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(one_run, *a) for a in arguments]
        finished = (future.result() for future in as_completed(futures))
    if tracker is not None:
        for record in records:  # from disk: logged unless a previous invocation did
            tracker.log(record, data_dirs[record.variability], settings)
    try:
        for record in finished:
            records.append(record)
            if tracker is not None:
                tracker.log(record, data_dirs[record.variability], settings)
            print(f"[{len(records)}/{total}] {record.variability:<9}{record.method:<14}"
                  f"seed {record.seed} fold {record.fold}: " + ", ".join(
                      f"{k} {v:.3f}" for k, v in record.scores.items() if v is not None)
                  + f" ({record.seconds:.0f} s)", flush=True)  # fmt: skip
    finally:
        if jobs > 1:
            pool.shutdown(cancel_futures=True)
    position = {run: index for index, run in enumerate(every_run)}
    return sorted(records, key=lambda r: position[(r.variability, r.method, r.seed, r.fold)])


UNSCORED_OVERRIDES = frozenset({"log_iterations", "log_epochs"})
"""Overrides that do not change what a run learns (only what it logs)."""


def run_differences(run_dir: Path, overrides: Mapping[str, Any]) -> list[str]:
    """How a finished run's recorded config differs from ``overrides`` (empty: the same).

    Every training records its config with the overrides applied (``configs/train.json``); a
    run without it predates that record and cannot be checked, which counts as a difference.
    """
    recorded_path = run_dir / "configs" / "train.json"
    if not recorded_path.is_file():
        return [f"no recorded config ({recorded_path.name})"]
    recorded = json.loads(recorded_path.read_text())
    missing = object()
    differences = []
    for key, wanted in overrides.items():
        if key in UNSCORED_OVERRIDES:
            continue
        found: Any = recorded
        for part in key.replace("#", "::").split("::"):  # MONAI's id separators
            found = found.get(part, missing) if isinstance(found, dict) else missing
        # through JSON, as the config was recorded (tuples become lists)
        if found != json.loads(json.dumps(wanted)):
            shown = "not set" if found is missing else json.dumps(found)
            differences.append(f"{key} {shown} instead of {json.dumps(wanted)}")
    return differences


def refuse_runs_trained_otherwise(
    finished: Iterable[tuple[Path, Mapping[str, Any]]], work: Path
) -> None:
    """Checks finished runs, before anything trains, against the overrides they would get now.

    A finished run is reused, not trained again: one trained with other settings (another
    ``--epochs``, ``--image-size``, method options...) would enter the table as if it had these.

    Args:
        finished: Each finished run's folder and the overrides this invocation would train it with.
        work: The work folder (for the message).

    Raises:
        ValueError: Naming the runs (the first 10) and what differs in each.
    """
    trained_otherwise = [
        f"{run_dir}: {'; '.join(differences)}"
        for run_dir, overrides in finished
        if (differences := run_differences(run_dir, overrides))
    ]
    if trained_otherwise:
        raise ValueError(
            f"{len(trained_otherwise)} finished run(s) in {work} were trained with other "
            "settings; use another --work folder (or --name) for these:\n"
            + "\n".join(trained_otherwise[:10])
        )


def run_folder(work: Path, variability: str, method: str, seed: int, fold: int) -> Path:
    """The folder of one run (checkpoints, evaluation, ``scores.json``)."""
    return work / "runs" / variability / method / f"seed{seed}_fold{fold}"


def torch_threads(threads: int) -> None:
    """Sets torch's intra-op threads (each run process calls it before training)."""
    import torch

    torch.set_num_threads(threads)


def one_run(
    work: Path,
    settings: Settings,
    variability: str,
    method: str,
    seed: int,
    fold: int,
    data_dir: Path,
    device: str,
    threads: int,
) -> RunScores:
    """Trains and scores one (variability, method, seed, fold); writes its ``scores.json``."""
    torch_threads(threads)
    run_dir = run_folder(work, variability, method, seed, fold)
    started = time.perf_counter()
    overrides = run_overrides(method, settings, seed, fold, device)
    scores, diagnostics, tags = train_and_evaluate(data_dir, run_dir, overrides)
    record = RunScores(variability, method, seed, fold, scores,
                       round(time.perf_counter() - started, 1), diagnostics, tags)  # fmt: skip
    # written last and atomically: a run without scores.json is trained again on resume
    partial = run_dir / "scores.json.partial"
    partial.write_text(json.dumps(asdict(record), indent=2) + "\n")
    partial.replace(run_dir / "scores.json")
    return record


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation and count of the defined values."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    spread = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), spread, len(present)


def summarise(records: Sequence[RunScores]) -> list[dict[str, Any]]:
    """One row per (variability, method): mean and standard deviation of every metric."""
    rows = []
    groups: dict[tuple[str, str], list[RunScores]] = {}
    for record in records:
        groups.setdefault((record.variability, record.method), []).append(record)
    for (variability, method), group in groups.items():
        row: dict[str, Any] = {"variability": variability, "method": method, "runs": len(group)}
        for metric in METRICS:
            summary = mean_std(r.scores.get(metric) for r in group)
            row[f"{metric}_mean"] = None if summary is None else round(summary[0], 4)
            row[f"{metric}_std"] = None if summary is None else round(summary[1], 4)
        dices = [r.scores.get("dice") for r in group]
        row["mask_missed"] = sum(d is not None and d < MISSED_DICE for d in dices)
        row["seconds_mean"] = round(statistics.fmean(r.seconds for r in group), 1)
        rows.append(row)
    return rows


def paired_comparison(
    records: Sequence[RunScores], pairs: Sequence[tuple[str, str]] = PAIRS
) -> list[dict[str, Any]]:
    """Challenger minus reference per (variability, seed, fold): mean, wins, Wilcoxon p."""
    from scipy.stats import wilcoxon

    by_key = {(r.variability, r.method, r.seed, r.fold): r for r in records}
    rows = []
    for challenger, reference in pairs:
        for variability in dict.fromkeys(r.variability for r in records):
            for metric in METRICS:
                differences = []
                for (v, method, seed, fold), record in by_key.items():
                    partner = by_key.get((v, reference, seed, fold))
                    if v != variability or method != challenger or partner is None:
                        continue
                    a, b = record.scores.get(metric), partner.scores.get(metric)
                    if a is not None and b is not None:
                        differences.append(a - b)
                if not differences:
                    continue
                sign = 1 if HIGHER_IS_BETTER[metric] else -1
                wins = sum(sign * d > 0 for d in differences)
                losses = sum(sign * d < 0 for d in differences)
                nonzero = [d for d in differences if d != 0]
                p_value = float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else None
                rows.append({
                    "challenger": challenger, "reference": reference,
                    "variability": variability, "metric": metric, "pairs": len(differences),
                    "mean_difference": round(statistics.fmean(differences), 4),
                    "std_difference": round(statistics.stdev(differences), 4)
                    if len(differences) > 1 else 0.0,
                    "wins": wins, "losses": losses, "ties": len(differences) - wins - losses,
                    "wilcoxon_p": None if p_value is None else round(p_value, 4),
                })  # fmt: skip
    return rows


def rlar_activity(records: Sequence[RunScores]) -> list[dict[str, Any]]:
    """Per (variability, method) with RLAR: the mean of the runs' last-epoch cosine statistics."""
    groups: dict[tuple[str, str], list[RunScores]] = {}
    for record in records:
        if record.diagnostics:
            groups.setdefault((record.variability, record.method), []).append(record)
    return [
        {"variability": variability, "method": method, "runs": len(group)}
        | {
            name: round(statistics.fmean(r.diagnostics.get(name, math.nan) for r in group), 4)
            for name in RLAR_DIAGNOSTICS
        }
        for (variability, method), group in groups.items()
    ]


def _cell(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"


def markdown(
    command: str,
    settings: Settings,
    summary: Sequence[Mapping[str, Any]],
    paired: Sequence[Mapping[str, Any]],
    machine: str,
    activity: Sequence[Mapping[str, Any]] = (),
    timing: str = "",
) -> str:
    """The summary and paired tables, with the command that produced them above."""
    lines = [
        "# Accuracy under reader variability (phantom, scores against the truth)",
        "",
        f"Produced by: `{command}`",
        "",
        f"Settings: {json.dumps(asdict(settings))}; machine: {machine}. {timing}",
        "Training labels are the readers' consensus; the scores compare the best checkpoint "
        "(selected on the fold's validation patients) with the phantom's true mask and level on "
        "the held-out test patients. Mean ± standard deviation over seeds and folds. Missed: "
        f"runs whose mask never found the nodule (test Dice < {MISSED_DICE}); they stay in the "
        "means.",
        "",
        "| variability | method | runs | missed | Dice | HD95 (mm) | macro-F1 | QWK | AUC "
        "| s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        cells = [_cell(row[f"{m}_mean"], row[f"{m}_std"]) for m in METRICS]
        lines.append(f"| {row['variability']} | {row['method']} | {row['runs']} | "
                     f"{row['mask_missed']} | " + " | ".join(cells)
                     + f" | {row['seconds_mean']:.0f} |")  # fmt: skip
    lines += [
        "",
        "## Paired comparisons (challenger minus reference, same seed and fold)",
        "",
        "Wins count pairs where the challenger is better (higher, or lower for HD95). The "
        "Wilcoxon signed-rank p-value is two-sided; with n pairs it cannot go below 2^(1-n) "
        "(0.5 with 2 pairs, 0.125 with 4, 0.031 with 6).",
        "",
        "| challenger - reference | variability | metric | pairs | mean difference | sd "
        "| wins / ties / losses | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in paired:
        p = "n/a" if row["wilcoxon_p"] is None else f"{row['wilcoxon_p']:.3f}"
        lines.append(
            f"| {row['challenger']} - {row['reference']} | {row['variability']} | "
            f"{row['metric']} | {row['pairs']} | {row['mean_difference']:+.4f} | "
            f"{row['std_difference']:.4f} | {row['wins']} / {row['ties']} / {row['losses']} "
            f"| {p} |"
        )
    if activity:
        lines += [
            "",
            "## Was the RLAR penalty active?",
            "",
            "Last training epoch, mean over runs: the mean and largest per-sample cosine between "
            "the mask and level gradient directions at the shared latent, and the share of "
            "samples above the margin tau (only those are penalised).",
            "",
            "| variability | method | runs | cos mean | cos max | share above tau |",
            "|---|---|---|---|---|---|",
        ]
        for row in activity:
            lines.append(
                f"| {row['variability']} | {row['method']} | {row['runs']} | "
                f"{row['rlar_cos_mean']:+.4f} | {row['rlar_cos_max']:+.4f} | "
                f"{row['rlar_excess_share']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], command: str) -> None:
    """A CSV whose first line is a comment with the command that produced it."""
    if not rows:
        return
    with path.open("w", newline="") as handle:
        handle.write(f"# {command}\n")
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, summary: Sequence[Mapping[str, Any]], command: str) -> None:
    """Bars of mean ± standard deviation per variability, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(row["method"] for row in summary))
    variabilities = list(dict.fromkeys(row["variability"] for row in summary))
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4), squeeze=False)
    width = 0.8 / max(len(methods), 1)
    for axis, metric in zip(axes[0], METRICS, strict=True):
        for index, method in enumerate(methods):
            rows = {r["variability"]: r for r in summary if r["method"] == method}
            means = [rows.get(v, {}).get(f"{metric}_mean") for v in variabilities]
            stds = [rows.get(v, {}).get(f"{metric}_std") for v in variabilities]
            xs = [i + index * width for i in range(len(variabilities))]
            axis.bar(xs, [m if m is not None else 0 for m in means], width,
                     yerr=[s if s is not None else 0 for s in stds], label=method)  # fmt: skip
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(variabilities))], variabilities)
        axis.set_title(metric)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(command, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine_line(device: str, jobs: int, threads: int) -> str:
    """The machine in one line: the CPU and cores, or the GPU; how the runs shared it."""
    import torch

    from machine import cpu_model

    if device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"{cpu_model()}, {os.cpu_count()} logical cores"
    return f"{where}, torch {torch.__version__}; {jobs} run(s) at once, {threads} thread(s) each"


def chosen_settings(args: argparse.Namespace) -> Settings:
    """``QUICK`` or ``FULL`` with the command line's overrides (``--fold-count`` sets ``folds``)."""
    overrides = {
        "seeds": tuple(args.seeds) if args.seeds is not None else None,
        "epochs": args.epochs,
        "images": args.images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "folds": args.fold_count,
        "variabilities": tuple(args.variability) if args.variability is not None else None,
    }
    chosen = {name: value for name, value in overrides.items() if value is not None}
    return replace(QUICK if args.quick else FULL, **chosen)


def command_line() -> argparse.ArgumentParser:
    """The benchmark's command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CPU settings (see QUICK)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=list(DEFAULT_METHODS))  # fmt: skip
    parser.add_argument("--variability", nargs="+", choices=VARIABILITIES,
                        help="reader variability presets (default: the settings')")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", help="override the settings' seeds")
    parser.add_argument("--epochs", type=int, help="override the settings' epochs")
    parser.add_argument("--images", type=int, help="override the settings' images")
    parser.add_argument("--image-size", type=int, help="override the settings' image_size")
    parser.add_argument("--batch-size", type=int, help="override the settings' batch_size")
    parser.add_argument("--fold-count", dest="fold_count", type=int,
                        help="override the settings' patient folds K: a run trains on K-1 "
                        "folds of the non-test patients and validates on one")  # fmt: skip
    parser.add_argument("--folds", type=int, nargs="+", help="run only these folds (a probe)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default cores/jobs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, help="data and runs (default benchmarks/.work/...)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="result file stem (accuracy or accuracy_quick)")
    add_mlflow_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    settings = chosen_settings(args)
    name = args.name or ("accuracy_quick" if args.quick else "accuracy")
    work = args.work or Path(__file__).parent / ".work" / name
    command = " ".join(["python benchmarks/accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    started, started_at = time.perf_counter(), time.time()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    tracker = benchmark_tracker(args, work, name)
    records = run_all(work, settings, args.methods, settings.variabilities, args.device,
                      jobs=args.jobs, threads=threads, folds=args.folds,
                      tracker=tracker)  # fmt: skip
    summary, paired = summarise(records), paired_comparison(records)
    activity = rlar_activity(records)
    machine = machine_line(args.device, args.jobs, threads)
    trained = sum(
        (run_folder(work, r.variability, r.method, r.seed, r.fold) / "scores.json").stat().st_mtime
        >= started_at
        for r in records
    )
    # The runs' own times stay meaningful when the tables are rebuilt from runs on disk.
    run_seconds = sum(r.seconds for r in records)
    timing = (
        f"Training and evaluation: {run_seconds:.0f} s summed over the runs, about "
        f"{run_seconds / args.jobs:.0f} s wall time at {args.jobs} run(s) at once. This "
        f"invocation: {time.perf_counter() - started:.0f} s, {trained} runs trained, "
        f"{len(records) - trained} reused from disk."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / f"{name}_runs.csv", [
        {"variability": r.variability, "method": r.method, "seed": r.seed, "fold": r.fold,
         **r.scores, "seconds": r.seconds} for r in records
    ], command)  # fmt: skip
    write_csv(args.out / f"{name}.csv", summary, command)
    write_csv(args.out / f"{name}_paired.csv", paired, command)
    write_csv(args.out / f"{name}_rlar_activity.csv", activity, command)
    (args.out / f"{name}.md").write_text(
        markdown(command, settings, summary, paired, machine, activity, timing)
    )
    plot(args.out / f"{name}.png", summary, command)
    print((args.out / f"{name}.md").read_text())
    print(timing)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
