"""The ``thyroid-monai`` command.

Subcommands:
    synth   render a phantom dataset (NIfTI + datalist) and/or a labelled preview grid
    prep    convert a source (dicom, ddti, tn3k, stanford-cine, folder) into NIfTI + datalist,
            or compute radiomics targets for a datalist (prep targets)
    audit   scan a prepared dataset for identifying information left
    demo    synthesise, export as DICOM, prepare (de-identified), train, evaluate, print results
    sync    replay tracking records kept locally while the MLflow server was unreachable
    register  register the model of a run whose registration a tracking outage postponed
    infer   run a trained model on images: mask, overlay, DICOM SEG and a clinical report

Exit status: 0 when everything was processed; 1 when a file was rejected or failed (the run still
goes on and writes its summary: rejected.csv, manifest.json, summary.json), or when nothing was
produced; 2 for a user error (a missing path, an impossible option value, too few patients for
the folds, zero epochs), reported as one line and checked before anything is written. Messages
never print the value of a DICOM element; an unexpected error is reported as one line too (set
THYROID_MONAI_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from thyroid_monai.tirads import ACR_LEVELS

if TYPE_CHECKING:  # heavy imports happen inside the subcommands, so `--help` stays fast
    from data_prep.convert import ConversionResult, Rejection, SourceCase
    from thyroid_monai.synthetic import PhantomConfig

SALT_VARIABLE = "THYROID_MONAI_DEID_SALT"
DEBUG_VARIABLE = "THYROID_MONAI_DEBUG"
DEMO_SALT = "thyroid-monai-demo"
"""Salt of the demo's de-identification (fake patients only; real data needs a secret salt)."""


class UsageError(SystemExit):
    """A user error: printed as one line when raised, exit status 2 (``str()`` is the message)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message
        print(f"thyroid-monai: {message}", file=sys.stderr)

    def __str__(self) -> str:
        return self.message


def usage_error(message: str) -> NoReturn:
    """Ends the command with ``message`` on one line and exit status 2."""
    raise UsageError(message)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _between_0_and_1(*, zero_allowed: bool) -> Callable[[str], float]:
    """A number in [0, 1) (``zero_allowed``) or in (0, 1)."""
    interval = "[0, 1)" if zero_allowed else "(0, 1)"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0.0 <= value < 1.0 if zero_allowed else 0.0 < value < 1.0):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


_fraction = _between_0_and_1(zero_allowed=True)
_probability = _between_0_and_1(zero_allowed=False)


def _existing(kind: str) -> Callable[[str], Path]:
    """A path that must exist: ``"folder"``, ``"file"`` or ``"path"`` (either)."""

    def parse(text: str) -> Path:
        path = Path(text)
        exists = {"folder": path.is_dir, "file": path.is_file, "path": path.exists}[kind]()
        if not exists:
            raise argparse.ArgumentTypeError(f"{kind} not found: {path}")
        return path

    parse.__name__ = f"existing {kind}"
    return parse


def _frames(text: str) -> str:
    """A frame policy (checked here, parsed by the command)."""
    from thyroid_monai.io.dicom import parse_frame_policy

    try:
        policy = parse_frame_policy(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if isinstance(policy, int) and policy < 1:
        raise argparse.ArgumentTypeError(f"frame numbers start at 1, got {policy}")
    return text


def _region(text: str) -> str:
    """``largest`` or a region index >= 0."""
    if text != "largest" and not (text.isdigit()):
        raise argparse.ArgumentTypeError(f"use 'largest' or a region index (0, 1...), got {text!r}")
    return text


def _class_mix(text: str) -> str | dict[str, float]:
    """``uniform``/``clinical`` or ``TR1=1,TR2=1,...``."""
    if "=" not in text:
        if text not in ("uniform", "clinical"):
            raise argparse.ArgumentTypeError(
                f"use uniform, clinical or weights like TR1=1,TR2=2, got {text!r}"
            )
        return text
    mix = {}
    for part in text.split(","):
        level, _, weight = part.partition("=")
        try:
            mix[level.strip().upper()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {level!r} is not a number") from None
    return mix


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="render a phantom dataset and/or a preview grid",
        description="Render synthetic thyroid ultrasound images with known ACR descriptors, known "
        "level and simulated readers; write NIfTI images and masks and a MONAI datalist.",
    )
    parser.add_argument("--out", type=Path, help="output folder for the dataset")
    parser.add_argument(
        "--n", type=_at_least(1), default=200, help="number of images (default 200)"
    )
    parser.add_argument(
        "--readers", type=_at_least(1), default=3, help="simulated readers per image"
    )
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
    parser.add_argument(
        "--images-per-patient", type=_at_least(1), default=2, help="views of each nodule"
    )
    parser.add_argument(
        "--size", type=_at_least(16), nargs=2, default=[256, 256], metavar=("ROWS", "COLS")
    )
    parser.add_argument("--folds", type=_at_least(2), default=5, help="patient-level folds")
    parser.add_argument("--test-fraction", type=_fraction, default=0.2, help="held-out patients")
    parser.add_argument("--workers", type=_at_least(1), default=1, help="rendering processes")
    parser.add_argument("--preview", type=Path, help="write a labelled PNG grid with contours")
    parser.add_argument(
        "--preview-count", type=_at_least(1), default=16, help="images in the preview"
    )
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
    from data_prep.phantom import phantom_patients, write_phantom_dataset
    from data_prep.splits import check_fold_capacity
    from thyroid_monai.synthetic import Phantom, save_preview_grid

    if args.out is None and args.preview is None:
        print("synth: give --out DIR (dataset) and/or --preview PNG", file=sys.stderr)
        return 2
    try:
        config = _phantom_config(args)
    except ValueError as error:  # a class mix naming no level, weights that sum to nothing...
        usage_error(f"synth: {error}")
    if args.out is not None:
        try:
            check_fold_capacity(phantom_patients(args.n, config), args.folds, args.test_fraction)
        except ValueError as error:
            usage_error(f"synth: --n {args.n} gives {error}")
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


def _split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--in", dest="input", type=_existing("path"), required=True, help="source folder"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--folds", type=_at_least(2), default=5, help="patient-level folds")
    parser.add_argument("--test-fraction", type=_fraction, default=0.2, help="held-out patients")
    parser.add_argument(
        "--test-list", type=_existing("file"),
        help="file of case IDs to hold out (one per line) instead",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=_at_least(1), default=1, help="conversion processes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_prep(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prep",
        help="convert a dataset into NIfTI + datalist, or compute radiomics targets",
        description="Convert a source into NIfTI images and masks (spacing in the header), a "
        "MONAI datalist with patient-level folds, manifest.json (provenance, checksums) and "
        "rejected.csv. Re-running resumes.",
    )
    sources = parser.add_subparsers(dest="source", required=True)
    dicom = sources.add_parser("dicom", help="a tree of ultrasound DICOM exports")
    _split_arguments(dicom)
    dicom.add_argument(
        "--masks", type=_existing("folder"), help="folder of PNG masks (DICOM SEG: in the tree)"
    )
    dicom.add_argument(
        "--labels", type=_existing("file"), help="labels CSV keyed by file or sop_instance_uid"
    )
    dicom.add_argument("--scheme", choices=["acr", "kwak"], default="acr", help="label scheme")
    dicom.add_argument(
        "--frames", type=_frames, default="middle",
        help="cine frames to keep: all, middle, first or a number",
    )  # fmt: skip
    dicom.add_argument(
        "--region", type=_region, default="largest", help="largest or the n-th 2D region"
    )
    dicom.add_argument("--salt", help=f"de-identification salt (default: ${SALT_VARIABLE})")
    dicom.add_argument("--no-deid", action="store_true", help="keep identities (not advised)")
    dicom.add_argument(
        "--retain-dates", choices=["none", "modified", "full"], default="none",
        help="Retain Longitudinal Temporal Information option",
    )  # fmt: skip
    dicom.set_defaults(handler=_run_prep, discover=_discover_dicom)
    _add_dataset_sources(sources)
    targets = sources.add_parser("targets", help="radiomics targets for a datalist")
    targets.add_argument("--datalist", type=_existing("file"), required=True)
    targets.add_argument("--workers", type=_at_least(1), default=1, help="processes")
    targets.add_argument(
        "--exclude-fold", type=_at_least(0),
        help="also leave this validation fold out of the statistics",
    )  # fmt: skip
    targets.add_argument("--no-progress", action="store_true", help="hide progress bars")
    targets.set_defaults(handler=_run_targets)


def _add_dataset_sources(sources: argparse._SubParsersAction) -> None:
    """The public-dataset converters."""
    ddti = sources.add_parser("ddti", help="DDTI: xml/ and images/ (Kwak TI-RADS labels)")
    _split_arguments(ddti)
    ddti.add_argument(
        "--keep-partial", action="store_true", help="also rasterise contours cut by truncation"
    )
    ddti.set_defaults(handler=_run_prep, discover=_discover_ddti)
    tn3k = sources.add_parser("tn3k", help="TN3K: trainval/test image and mask folders")
    _split_arguments(tn3k)
    tn3k.add_argument(
        "--folds-from", choices=["computed", "dataset"], default="computed",
        help="computed patient/duplicate-safe folds, or the dataset's fold JSON files",
    )  # fmt: skip
    tn3k.set_defaults(handler=_run_prep, discover=_discover_tn3k)
    stanford = sources.add_parser("stanford-cine", help="Stanford AIMI thyroid cine clips (HDF5)")
    _split_arguments(stanford)
    stanford.add_argument(
        "--frames", type=_frames, default="middle", help="all, middle, first or a frame"
    )
    stanford.add_argument("--frame-stride", type=_at_least(1), default=1, help="with --frames all")
    stanford.set_defaults(handler=_run_prep, discover=_discover_stanford)
    folder = sources.add_parser("folder", help="images/, masks/ and a labels CSV")
    _split_arguments(folder)
    folder.add_argument("--images", default="images", help="images subfolder of --in")
    folder.add_argument("--masks", default="masks", help="masks subfolder (same file stems)")
    folder.add_argument("--labels", type=_existing("file"), help="labels CSV keyed by 'image'")
    folder.add_argument("--scheme", choices=["acr", "kwak"], default="acr", help="label scheme")
    folder.set_defaults(handler=_run_prep, discover=_discover_folder)


def _discover_tn3k(
    args: argparse.Namespace,
) -> tuple[list[SourceCase], list[Rejection], dict[str, object]]:
    from data_prep.images import discover_tn3k

    cases, rejections, extras = discover_tn3k(args.input, folds_from=args.folds_from)
    header: dict[str, object] = {
        "name": "tn3k",
        "description": "TN3K thyroid nodule ultrasound (Gong et al., ISBI 2021)",
        "source": "tn3k",
        "tirads_scheme": "acr",
        "note": "no TI-RADS levels (tirads is null); pathology from label4*.csv when present",
        **extras,
    }
    return list(cases), rejections, header


def _discover_stanford(
    args: argparse.Namespace,
) -> tuple[list[SourceCase], list[Rejection], dict[str, object]]:
    from data_prep.stanford import discover_stanford
    from thyroid_monai.io.dicom import parse_frame_policy

    frames = parse_frame_policy(args.frames)
    cases, rejections = discover_stanford(args.input, frames=frames, stride=args.frame_stride)
    header: dict[str, object] = {
        "name": "stanford-thyroid-cine",
        "description": "Stanford AIMI thyroid ultrasound cine-clip dataset",
        "source": "stanford-cine",
        "tirads_scheme": "acr",
        "frames": args.frames,
        "frame_stride": args.frame_stride,
    }
    return list(cases), rejections, header


def _discover_folder(
    args: argparse.Namespace,
) -> tuple[list[SourceCase], list[Rejection], dict[str, object]]:
    from data_prep.images import discover_folder

    cases, rejections = discover_folder(
        args.input, images=args.images, masks=args.masks, labels_csv=args.labels,
        scheme=args.scheme,
    )  # fmt: skip
    header: dict[str, object] = {
        "name": args.input.name,
        "description": "Image folder converted by thyroid-monai prep folder",
        "source": "folder",
        "tirads_scheme": args.scheme,
    }
    return list(cases), rejections, header


def _discover_ddti(
    args: argparse.Namespace,
) -> tuple[list[SourceCase], list[Rejection], dict[str, object]]:
    from data_prep.ddti import discover_ddti

    cases, rejections = discover_ddti(args.input, keep_partial=args.keep_partial)
    header: dict[str, object] = {
        "name": "ddti",
        "description": "DDTI thyroid ultrasound database (Pedraza et al., SPIE 9287, 2015)",
        "source": "ddti",
        "version": "original XML + JPG layout",
        "tirads_scheme": "kwak",
        "burned_in_text": "present in the frames, not removed (no region information)",
    }
    return list(cases), rejections, header


def _fixed_test(args: argparse.Namespace) -> frozenset[str]:
    if args.test_list is None:
        return frozenset()
    lines = args.test_list.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip())


def _deid_options(args: argparse.Namespace) -> object | None:
    from thyroid_monai.io.deid import DeidentificationOptions

    if args.no_deid:
        return None
    salt = args.salt or os.environ.get(SALT_VARIABLE)
    if not salt:
        usage_error(
            f"prep dicom: de-identification needs a secret salt: --salt or ${SALT_VARIABLE} "
            "(the same salt gives the same pseudonyms and UIDs on every run)"
        )
    return DeidentificationOptions(salt=salt, retain_dates=args.retain_dates)


def _discover_dicom(
    args: argparse.Namespace,
) -> tuple[list[SourceCase], list[Rejection], dict[str, object]]:
    from data_prep.dicom import discover_dicom
    from thyroid_monai.io.dicom import parse_frame_policy

    deid = _deid_options(args)
    region: str | int = args.region if args.region == "largest" else int(args.region)
    cases, rejections = discover_dicom(
        args.input, args.out, masks_dir=args.masks, labels_csv=args.labels,
        frames=parse_frame_policy(args.frames), region=region,  # type: ignore[arg-type]
        scheme=args.scheme, deid=deid,  # type: ignore[arg-type]
    )  # fmt: skip
    header: dict[str, object] = {
        "name": "dicom-ultrasound",
        "description": "Ultrasound DICOM exports converted by thyroid-monai prep dicom",
        "source": "dicom",
        "tirads_scheme": args.scheme,
        "deidentified": deid is not None,
        "frames": args.frames,
        "region": args.region,
    }
    return list(cases), rejections, header


def convert_source(args: argparse.Namespace) -> ConversionResult:
    """Runs the converter chosen on the command line (see :func:`_run_prep`)."""
    from data_prep.convert import SplitOptions, convert_dataset

    cases, rejections, header = args.discover(args)
    # Paths may name patients: a de-identified dataset records none of them in its manifest.
    hide_paths = bool(header.get("deidentified"))
    options = {
        k: ((None if hide_paths else str(v)) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("handler", "discover", "salt", "no_progress")
    }
    split = SplitOptions(
        folds=args.folds, test_fraction=args.test_fraction, seed=args.seed,
        fixed_test=_fixed_test(args) | frozenset(header.pop("fixed_test", ())),
        keep_folds=bool(header.pop("keep_folds", False)),
    )  # fmt: skip
    return convert_dataset(
        cases, rejections, args.out, header=header, split=split, options=options,
        workers=args.workers, progress=not args.no_progress,
    )  # fmt: skip


def _run_prep(args: argparse.Namespace) -> int:
    try:
        result = convert_source(args)
    except (ValueError, FileNotFoundError) as error:  # bad input or settings, named in the text
        print(f"prep {args.source}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    failed = len(result.failed)
    print(
        f"prep {args.source}: {result.samples} images from {result.converted} new and "
        f"{result.reused} reused cases; {len(result.rejected)} rejected, {failed} of them "
        f"failures (see {args.out / 'rejected.csv'})"
    )
    if not result.ok:
        print(f"prep {args.source}: nothing converted", file=sys.stderr)
        return 1
    print(f"datalist: {result.datalist}")
    if failed:
        print(f"prep {args.source}: {failed} files failed (see rejected.csv)", file=sys.stderr)
        return 1
    return 0


def _run_targets(args: argparse.Namespace) -> int:
    from data_prep.targets import write_radiomics_targets

    try:
        summary = write_radiomics_targets(
            args.datalist, workers=args.workers, exclude_fold=args.exclude_fold,
            progress=not args.no_progress,
        )  # fmt: skip
    except ValueError as error:  # an unusable datalist or nothing to fit on, named in the text
        print(f"prep targets: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(
        f"prep targets: {summary.items} items, {summary.computed} computed, "
        f"{summary.cached} from the cache, {len(summary.failed)} failed; statistics in "
        f"{summary.stats_path}"
    )
    if summary.failed:
        print(f"prep targets: {len(summary.failed)} items failed (see {summary.rejected_path})",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _add_audit(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="fail if a prepared dataset still holds identifying information",
        description="Check every DICOM file (PS3.15 basic profile, private tags, overlays, "
        "pixels outside the ultrasound regions) and NIfTI header under a folder.",
    )
    parser.add_argument("folder", type=_existing("folder"))
    parser.add_argument(
        "--against",
        type=_existing("folder"),
        help="the DICOM source the folder was made from: every file under the folder (any "
        "format) must hold none of its patient names, IDs and institutions",
    )
    parser.set_defaults(handler=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from data_prep.audit import SourceIdentifiers, audit_folder, read_source_identifiers

    found = read_source_identifiers(args.against) if args.against else SourceIdentifiers([], [])
    identifiers, unreadable = found.values, found.unreadable
    report = audit_folder(args.folder, identifiers)
    report.problems.extend(
        f"source {path}: {reason}; its identifiers were not searched for"
        for path, reason in unreadable
    )
    for problem in report.problems:
        print(problem)
    checked = f"{report.dicom_files} DICOM and {report.nifti_files} NIfTI files"
    if args.against:
        checked += f", {report.searched_files} files searched for {len(identifiers)} identifiers"
    if report.passed:
        print(f"audit passed: {checked}, nothing identifying found")
        return 0
    reason = f"{len(report.problems)} problems" if report.problems else "no file to check"
    print(f"audit FAILED: {checked}, {reason}", file=sys.stderr)
    return 1


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthesise, export as DICOM, prepare, train, evaluate, show the MLflow run",
        description="The main job: a phantom exported as ultrasound DICOM with fake identities, "
        "converted and de-identified by prep dicom, a few epochs of multitask training through "
        "the MONAI bundle (tracked in MLflow), evaluation on held-out patients.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    # 600 images at 64 px for 12 epochs learn the level in about the time 240 images at 128 px
    # took for 10 epochs (docs/level.md: data size matters more than resolution on a CPU budget)
    parser.add_argument("--n", type=_at_least(1), default=600, help="phantom images")
    parser.add_argument("--epochs", type=_at_least(1), default=12)
    parser.add_argument("--image-size", type=_at_least(16), default=64, help="network input size")
    parser.add_argument("--batch-size", type=_at_least(1), default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=_at_least(1), default=2, help="conversion processes")
    parser.set_defaults(handler=_run_demo)


def _prepare_demo_data(run_dir: Path, count: int, config: PhantomConfig, workers: int) -> Path:
    """Phantom -> DICOM export (fake identities burned in) -> ``prep dicom`` -> PHI audit."""
    from data_prep.audit import audit_folder
    from data_prep.phantom_dicom import export_is_current, export_phantom_dicom

    export, data_dir = run_dir / "export", run_dir / "data"
    if export_is_current(export, count, config):
        print(f"      reusing the DICOM export in {export}")
    else:
        export_phantom_dicom(export, count, config)
    print(f"[2/4] prep dicom (de-identified, cropped to the tissue region) -> {data_dir}")
    args = argparse.Namespace(
        source="dicom", input=export, out=data_dir, masks=None, labels=export / "labels.csv",
        scheme="acr", frames="middle", region="largest", salt=DEMO_SALT, no_deid=False,
        retain_dates="none", folds=5, test_fraction=0.2, test_list=None, seed=config.seed,
        workers=workers, no_progress=True, discover=_discover_dicom,
    )  # fmt: skip
    result = convert_source(args)
    if not result.ok or result.datalist is None:
        raise RuntimeError(f"prep dicom converted nothing from {export}; see rejected.csv")
    report = audit_folder(data_dir)
    if not report.passed:
        raise RuntimeError(f"PHI audit of {data_dir} failed: {report.problems[:3]}")
    print(
        f"      {result.samples} images ({result.reused} reused), {len(result.rejected)} rejected;"
        f" audit passed on {report.dicom_files} DICOM and {report.nifti_files} NIfTI files"
    )
    return data_dir


def _run_demo(args: argparse.Namespace) -> int:
    import mlflow

    from data_prep.phantom import phantom_patients
    from data_prep.splits import check_fold_capacity
    from thyroid_monai.synthetic import PhantomConfig
    from thyroid_monai.workflows import read_metrics_csv, run_bundle, sqlite_uri, tracking_store

    try:
        check_fold_capacity(phantom_patients(args.n, PhantomConfig(seed=args.seed)), 5, 0.2)
    except ValueError as error:
        usage_error(f"demo: --n {args.n} gives {error}")
    started = time.perf_counter()
    run_dir: Path = args.out
    print(f"[1/4] phantom: {args.n} images, 3 readers -> DICOM export with fake identities")
    data_dir = _prepare_demo_data(run_dir, args.n, PhantomConfig(seed=args.seed), args.workers)

    run_name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.rmtree(run_dir / "models", ignore_errors=True)  # checkpoints of an earlier demo
    common = {
        "image_size": [args.image_size, args.image_size],
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    print(f"[3/4] training {args.epochs} epochs through the bundle (MLflow run '{run_name}')")
    run_bundle(
        ["train.yaml", "progress.yaml"],
        run_dir=run_dir,
        dataset_dir=data_dir,
        quiet=True,
        overrides={**common, "max_epochs": args.epochs, "run_name": run_name},
    )
    print("[4/4] evaluating the best checkpoint on the held-out test patients")
    run_bundle(
        ["train.yaml", "evaluate.yaml"],
        run_dir=run_dir,
        dataset_dir=data_dir,
        tracking=False,
        quiet=True,
        overrides={**common, "log_epochs": False},
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
    parser.add_argument(
        "store", type=_existing("folder"), help="the fallback folder, e.g. runs/x/eval/offline"
    )
    parser.add_argument("--to", help="tracking server URI (default: the one recorded, then env)")
    parser.set_defaults(handler=_run_sync)


def _run_sync(args: argparse.Namespace) -> int:
    from thyroid_monai.tracking import sync_offline_store

    report = sync_offline_store(args.store, args.to)
    print(report.summary())
    for key in report.skipped_params:
        print(f"  param '{key}' differs on the server and was kept there (params are immutable)")
    return 0


def _add_register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "register",
        help="register a run's model once the tracking server is back",
        description="Log and register the best checkpoint of a training run whose registration "
        "was postponed because the MLflow server was unreachable (eval/registration_pending.json)."
        " The champion alias moves to the new version only if it beats the champion.",
    )
    parser.add_argument(
        "run_dir", type=_existing("folder"), help="the run folder (bundle_root), e.g. runs/x"
    )
    parser.add_argument("--to", help="tracking server URI (default: the one the run used)")
    parser.set_defaults(handler=_run_register)


def _run_register(args: argparse.Namespace) -> int:
    from thyroid_monai.tracking import register_pending

    registration = register_pending(args.run_dir, args.to)
    print(f"registered {registration.model_uri}: {registration.reason}")
    return 0


def _add_infer(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="run a trained model on images and write masks, overlays and clinical reports",
        description="Per image: the nodule mask (NIfTI; DICOM SEG for DICOM inputs), a PNG "
        "overlay and report.json (TI-RADS level and probabilities, descriptor points, size in mm, "
        "ACR recommendation, findings). DICOM inputs are de-identified unless "
        "--keep-identifiers is given.",
    )
    parser.add_argument(
        "--model", required=True,
        help="bundle run folder, checkpoint (.pt), TorchScript file, or models:/ or runs:/ URI",
    )  # fmt: skip
    parser.add_argument(
        "--in", dest="input", type=_existing("path"), required=True, help="file or folder"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--trust-model", action="store_true",
        help="allow loading that unpickles (MLflow models, pickled checkpoints): runs code from "
        "the model file, so only for models of trusted origin",
    )  # fmt: skip
    parser.add_argument(
        "--config", type=Path, nargs="+",
        help="the run's config files when the run folder has no saved eval/config_*.json",
    )  # fmt: skip
    parser.add_argument(
        "--keep-identifiers", action="store_true",
        help="do not de-identify DICOM inputs (outputs then carry patient data)",
    )  # fmt: skip
    parser.add_argument(
        "--salt", help=f"de-identification salt (default: ${SALT_VARIABLE}, else a random one)"
    )
    parser.add_argument("--threshold", type=_probability, default=0.5, help="mask probability")
    parser.add_argument(
        "--frames", type=_frames, default="middle", help="cine frame: middle, first or a number"
    )
    parser.add_argument("--no-segmentation", action="store_true", help="no DICOM SEG output")
    parser.add_argument(
        "--foci-from-bright-spots", action="store_true",
        help="estimate echogenic foci from bright spots (unreliable: see the report docs)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.set_defaults(handler=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from thyroid_monai.inference import (
        DescriptorThresholds,
        InferenceSettings,
        ModelLoadError,
        deidentification_options,
        load_model,
        run_inference,
    )
    from thyroid_monai.io.dicom import parse_frame_policy

    try:
        model = load_model(
            args.model, trust=args.trust_model, config_files=args.config, device=args.device
        )
    except ModelLoadError as error:
        print(f"infer: {error}", file=sys.stderr)
        return 2
    if not args.input.exists():
        print(f"infer: input not found: {args.input}", file=sys.stderr)
        return 2
    deid = deidentification_options(args.keep_identifiers, args.salt)
    settings = InferenceSettings(
        threshold=args.threshold,
        frames=parse_frame_policy(args.frames),
        write_segmentation=not args.no_segmentation,
        descriptor_thresholds=DescriptorThresholds(
            foci_from_bright_spots=args.foci_from_bright_spots
        ),
    )

    def report(path: Path, name: str | None, error: str | None) -> None:
        if error is not None:
            print(f"FAILED  {error}", file=sys.stderr)
        elif name is not None:
            print(f"ok      {name}")

    summary = run_inference(model, args.input, args.out, deid=deid, settings=settings,
                            on_case=report)  # fmt: skip
    print(
        f"infer: {len(summary.written)} images written to {args.out}, {len(summary.failed)} "
        f"failed, {len(summary.skipped)} skipped (not images)"
    )
    if summary.failed:
        return 1
    return 0 if summary.written else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``thyroid-monai``."""
    parser = _Parser(
        prog="thyroid-monai",
        description="MONAI-based thyroid ultrasound pipeline: nodule mask and ACR TI-RADS level.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_synth(subparsers)
    _add_prep(subparsers)
    _add_audit(subparsers)
    _add_demo(subparsers)
    _add_sync(subparsers)
    _add_register(subparsers)
    _add_infer(subparsers)
    return parser


def _quiet_pydicom() -> None:
    """Silences pydicom's warnings and log records.

    pydicom warns with the offending value ("Invalid value for VR DA: '...'"): patient data on the
    terminal. The commands report every file's problem themselves.
    """
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thyroid-monai`` console script."""
    args = build_parser().parse_args(argv)
    _quiet_pydicom()
    if os.environ.get(DEBUG_VARIABLE):
        return int(args.handler(args))
    try:
        return int(args.handler(args))
    except Exception as error:  # a traceback could print element values; one line instead
        from thyroid_monai.io.errors import safe_reason

        print(
            f"thyroid-monai {args.command}: failed ({safe_reason(error)}); set "
            f"{DEBUG_VARIABLE}=1 for the traceback",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
