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
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from data_prep.sources import (
    SOURCES,
    ConvertOptions,
    OptionError,
    add_convert_arguments,
    convert_source,
)
from data_prep.sources.dicom import SALT_VARIABLE
from thyroid_monai.arguments import (
    at_least,
    class_mix,
    existing,
    fraction,
    frames,
    probability,
)
from thyroid_monai.demo import DemoOptions
from thyroid_monai.tirads import ACR_LEVELS

if TYPE_CHECKING:  # heavy imports happen inside the subcommands, so `--help` stays fast
    from thyroid_monai.synthetic import PhantomConfig

DEBUG_VARIABLE = "THYROID_MONAI_DEBUG"


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


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="render a phantom dataset and/or a preview grid",
        description="Render synthetic thyroid ultrasound images with known ACR descriptors, known "
        "level and simulated readers; write NIfTI images and masks and a MONAI datalist.",
    )
    parser.add_argument("--out", type=Path, help="output folder for the dataset")
    parser.add_argument("--n", type=at_least(1), default=200, help="number of images (default 200)")
    parser.add_argument(
        "--readers", type=at_least(1), default=3, help="simulated readers per image"
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
        type=class_mix,
        default="uniform",
        help="'uniform', 'clinical' or weights like TR1=1,TR2=2,... "
        f"(levels {', '.join(ACR_LEVELS)})",
    )
    parser.add_argument(
        "--images-per-patient", type=at_least(1), default=2, help="views of each nodule"
    )
    parser.add_argument(
        "--size", type=at_least(16), nargs=2, default=[256, 256], metavar=("ROWS", "COLS")
    )
    parser.add_argument("--folds", type=at_least(2), default=5, help="patient-level folds")
    parser.add_argument("--test-fraction", type=fraction, default=0.2, help="held-out patients")
    parser.add_argument("--workers", type=at_least(1), default=1, help="rendering processes")
    parser.add_argument("--preview", type=Path, help="write a labelled PNG grid with contours")
    parser.add_argument(
        "--preview-count", type=at_least(1), default=16, help="images in the preview"
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


def _add_prep(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prep",
        help="convert a dataset into NIfTI + datalist, or compute radiomics targets",
        description="Convert a source into NIfTI images and masks (spacing in the header), a "
        "MONAI datalist with patient-level folds, manifest.json (provenance, checksums) and "
        "rejected.csv. Re-running resumes.",
    )
    sources = parser.add_subparsers(dest="source", required=True)
    for source in SOURCES.values():
        source_parser = sources.add_parser(source.name, help=source.help)
        add_convert_arguments(source_parser)
        source.add_arguments(source_parser)
        source_parser.set_defaults(handler=_run_prep)
    targets = sources.add_parser("targets", help="radiomics targets for a datalist")
    targets.add_argument("--datalist", type=existing("file"), required=True)
    targets.add_argument("--workers", type=at_least(1), default=1, help="processes")
    targets.add_argument(
        "--exclude-fold", type=at_least(0),
        help="also leave this validation fold out of the statistics",
    )  # fmt: skip
    targets.add_argument("--no-progress", action="store_true", help="hide progress bars")
    targets.set_defaults(handler=_run_targets)


def _run_prep(args: argparse.Namespace) -> int:
    source = SOURCES[args.source]
    convert = ConvertOptions.from_args(args)
    try:
        result = convert_source(source, convert, source.options(args))
    except OptionError as error:  # options that cannot work together: nothing written yet
        usage_error(f"prep {args.source}: {error}")
    except (ValueError, FileNotFoundError) as error:  # bad input or settings, named in the text
        print(f"prep {args.source}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    failed = len(result.failed)
    print(
        f"prep {args.source}: {result.samples} images from {result.converted} new and "
        f"{result.reused} reused cases; {len(result.rejected)} rejected, {failed} of them "
        f"failures (see {convert.out / 'rejected.csv'})"
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
    parser.add_argument("folder", type=existing("folder"))
    parser.add_argument(
        "--against",
        type=existing("folder"),
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
    defaults = DemoOptions()  # the defaults are written once, in DemoOptions
    parser.add_argument("--out", type=Path, default=defaults.out, help="run folder")
    parser.add_argument("--n", type=at_least(1), default=defaults.images, help="phantom images")
    parser.add_argument("--epochs", type=at_least(1), default=defaults.epochs)
    parser.add_argument(
        "--image-size", type=at_least(16), default=defaults.image_size, help="network input size"
    )
    parser.add_argument("--batch-size", type=at_least(1), default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--workers", type=at_least(1), default=defaults.workers, help="conversion processes"
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from thyroid_monai.demo import check_demo_capacity, run_demo

    options = DemoOptions(
        out=args.out, images=args.n, epochs=args.epochs, image_size=args.image_size,
        batch_size=args.batch_size, seed=args.seed, workers=args.workers,
    )  # fmt: skip
    try:
        check_demo_capacity(options)
    except ValueError as error:
        usage_error(f"demo: --n {args.n} gives {error}")
    run_demo(options)
    return 0


def _add_sync(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sync",
        help="replay tracking records kept locally during a server outage",
        description="Replay the runs of an offline tracking store (written while the MLflow "
        "server was unreachable) onto the server. Safe to run twice: nothing is duplicated.",
    )
    parser.add_argument(
        "store", type=existing("folder"), help="the fallback folder, e.g. runs/x/eval/offline"
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
        "run_dir", type=existing("folder"), help="the run folder (bundle_root), e.g. runs/x"
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
        "--in", dest="input", type=existing("path"), required=True, help="file or folder"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--trust-model", action="store_true",
        help="allow loading that runs code from the model (MLflow models: their logged source; "
        "pickled checkpoints), so only for models of trusted origin",
    )  # fmt: skip
    parser.add_argument(
        "--config", type=Path, nargs="+",
        help="the run's config files when the run folder has no configs/train.json",
    )  # fmt: skip
    parser.add_argument(
        "--keep-identifiers", action="store_true",
        help="do not de-identify DICOM inputs (outputs then carry patient data)",
    )  # fmt: skip
    parser.add_argument(
        "--salt", help=f"de-identification salt (default: ${SALT_VARIABLE}, else a random one)"
    )
    parser.add_argument("--threshold", type=probability, default=0.5, help="mask probability")
    parser.add_argument(
        "--frames", type=frames, default="middle", help="cine frame: middle, first or a number"
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
