"""What every converter shares: resumable, atomic conversion into NIfTI + datalist + manifest.

A converter finds the cases of its source (:class:`SourceCase`: a stable key, the files it reads,
and a ``convert()`` that returns :class:`Sample` objects or raises :class:`ConversionError`) and
the files it cannot use (:class:`Rejection`). :func:`convert_dataset` then writes, for every
sample::

    images/<case_id>.nii.gz      uint8 image, spacing in the header (unknown: unit pixels)
    labels/<case_id>.nii.gz      uint8 mask (0/1), when the source has one

and, for the whole run, ``datalist.json`` (header, ``training`` items with patient-level folds,
``testing`` items), ``manifest.json`` (provenance: converter, options, every source file and
output file with its SHA-256) and ``rejected.csv`` (``path,reason,stage``; a header only when
nothing was rejected).

Per-file isolation: whatever goes wrong with one case (a :class:`ConversionError`, or any other
exception of a reader, codec or writer) becomes a :class:`Rejection` with the stage that failed
(``read``, ``deidentify``, ``convert``, ``write``...) and a reason that names the file and never
an element's value, and the run goes on. Files a converter leaves out on purpose (not an image
of this source, nothing to learn from) are listed with stage ``skipped``; every other stage counts
as a failure (:attr:`ConversionResult.failed`). The outputs of a case appear completely or not at
all: a case that fails after writing some of its files has them removed. ``rejected.csv`` and
``manifest.json`` are written on every run, before the split, so they exist even when the split
refuses the data (too few patients for the folds).

Resuming: after a case's files are written, a record with the checksums of its sources and
outputs goes to ``.records/``. A re-run reuses a record whose sources and outputs still have the
recorded checksums and converts everything else, so an interrupted run continues where it
stopped, and a killed run leaves no half-written file (every write is atomic).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import thyroid_monai
from data_prep.datalist import write_datalist
from data_prep.splits import split_dataset
from thyroid_monai import keys
from thyroid_monai.io.errors import SafeMessageError, safe_reason
from thyroid_monai.io.files import atomic_path, write_json_atomic
from thyroid_monai.io.nifti import write_nifti_2d

RECORDS = ".records"


class ConversionError(SafeMessageError):
    """A source case that cannot be converted; the message says why (it goes to rejected.csv).

    Attributes:
        stage: What failed: ``read``, ``deidentify``, ``convert`` (the default), ``write``...
    """

    def __init__(self, message: str, stage: str = "convert"):
        super().__init__(message)
        self.stage = stage


SKIPPED = "skipped"
"""Stage of a file left out on purpose (not a failure)."""


@dataclass
class Sample:
    """One converted image: pixels, optional mask, and the datalist fields.

    Attributes:
        case_id: Unique within the dataset; becomes the file name.
        patient: Patient (or group) identifier used by the splits.
        image: ``uint8`` ``(rows, columns)``.
        spacing_mm: ``(x, y)`` in mm, or ``None`` when unknown.
        mask: ``(rows, columns)`` nodule mask (any dtype; non-zero is nodule), or ``None``.
        fields: Further datalist fields (``tirads``, ``descriptors``, ``frame``...).
    """

    case_id: str
    patient: str
    image: np.ndarray
    spacing_mm: tuple[float, float] | None
    mask: np.ndarray | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A source file that was not converted, why, and at which stage (``skipped``: on purpose)."""

    path: str
    reason: str
    stage: str = "convert"

    @property
    def failed(self) -> bool:
        """A failure rather than a file left out on purpose."""
        return self.stage != SKIPPED


class SourceCase:
    """One unit of conversion (a file, a case with several images, a clip...).

    Subclasses set :attr:`key` (stable across runs), :attr:`files` (what is read, for checksums)
    and implement :meth:`convert`. They must be picklable (they travel to worker processes).
    """

    key: str
    files: tuple[Path, ...]
    root: Path
    skipped: list[Rejection]
    """Parts of the case left out by :meth:`convert` (an image without any label...)."""

    def convert(self) -> list[Sample]:
        """The samples of this case.

        Raises:
            ConversionError: When the case cannot be converted.
        """
        raise NotImplementedError

    def provenance(self) -> list[dict[str, Any]]:
        """Source entries of the manifest: path relative to the input root and SHA-256."""
        return [{"path": _relative(f, self.root), "sha256": file_sha256(f)} for f in self.files]

    def recorded_key(self) -> str | None:
        """The key as written into the case's resume record (``None``: it may identify)."""
        return self.key

    def record_name(self) -> str:
        """File name of the case's resume record in ``.records/``."""
        return f"{hashlib.sha256(self.key.encode()).hexdigest()}.json"

    def write_extras(self, out_dir: Path) -> list[dict[str, str]]:
        """Writes files of the case beyond its samples (after the samples, atomically).

        Returns:
            ``{"path", "sha256"}`` of each file, relative to ``out_dir`` (none by default).
        """
        return []


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pixel_sha256(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and pixels: byte-identical images give the same digest."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (runs of other characters become ``-``)."""
    name = _UNSAFE.sub("-", text).strip("-.")
    if not name:
        raise ValueError(f"{text!r} gives an empty file name")
    return name


@dataclass
class _Outcome:
    key: str
    record: dict[str, Any] | None
    rejections: list[Rejection]


def _write_sample(sample: Sample, out_dir: Path, written: list[Path]) -> dict[str, Any]:
    if sample.image.ndim != 2 or sample.image.dtype != np.uint8:
        raise ConversionError(
            f"case {sample.case_id}: image must be uint8 (rows, columns), got "
            f"{sample.image.dtype} {sample.image.shape}"
        )
    name = safe_name(sample.case_id)
    item: dict[str, Any] = {keys.IMAGE: f"images/{name}.nii.gz"}
    outputs = {item[keys.IMAGE]: sample.image}
    if sample.mask is not None:
        if sample.mask.shape != sample.image.shape:
            raise ConversionError(
                f"case {sample.case_id}: mask shape {sample.mask.shape} differs from image "
                f"shape {sample.image.shape}"
            )
        item[keys.LABEL] = f"labels/{name}.nii.gz"
        outputs[item[keys.LABEL]] = (sample.mask > 0).astype(np.uint8)
    spacing = sample.spacing_mm
    item.update(
        {
            keys.SPACING: [float(spacing[0]), float(spacing[1])] if spacing else None,
            keys.PATIENT: sample.patient,
            keys.CASE_ID: sample.case_id,
            **sample.fields,
        }
    )
    entries = []
    for relative, array in outputs.items():
        path = write_nifti_2d(out_dir / relative, array, spacing)
        written.append(path)
        entries.append({"path": relative, "sha256": file_sha256(path)})
    return {"item": item, "outputs": entries, "image_sha256": pixel_sha256(sample.image)}


def _convert_one(task: tuple[SourceCase, str]) -> _Outcome:
    """Converts one case, isolated: any failure becomes a rejection and leaves no output."""
    case, out = task
    out_dir = Path(out)
    written: list[Path] = []
    stage = "convert"
    try:
        samples = case.convert()
        if not samples:
            raise ConversionError("no image in this case")
        stage = "write"
        entries = [_write_sample(sample, out_dir, written) for sample in samples]
        extras = case.write_extras(out_dir)
        written.extend(out_dir / extra["path"] for extra in extras)
        skipped = [dataclasses.replace(r, stage=SKIPPED) for r in getattr(case, "skipped", [])]
        record = {
            "key": case.recorded_key(),
            "sources": case.provenance(),
            "samples": entries,
            "extras": extras,
            "skipped": [[r.path, r.reason] for r in skipped],
        }
        write_json_atomic(out_dir / RECORDS / case.record_name(), record)
    except Exception as error:  # one case's failure, of whatever type, must not end the run
        for path in written:  # its outputs appear completely or not at all
            path.unlink(missing_ok=True)
        if isinstance(error, ConversionError):
            rejection = Rejection(case.key, str(error), error.stage)
        else:
            rejection = Rejection(case.key, f"{case.key}: {safe_reason(error)}", stage)
        return _Outcome(case.key, None, [rejection])
    return _Outcome(case.key, record, skipped)


def _reusable(case: SourceCase, out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / RECORDS / case.record_name()
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if record.get("sources") != case.provenance():
        return None
    outputs = [o for sample in record.get("samples", []) for o in sample["outputs"]]
    for output in outputs + list(record.get("extras", [])):
        target = out_dir / output["path"]
        if not target.is_file() or file_sha256(target) != output["sha256"]:
            return None
    return record


@dataclass
class ConversionResult:
    """What a conversion produced."""

    datalist: Path | None
    converted: int
    reused: int
    rejected: list[Rejection]
    samples: int

    @property
    def ok(self) -> bool:
        """At least one image was converted (the command exits non-zero otherwise)."""
        return self.samples > 0

    @property
    def failed(self) -> list[Rejection]:
        """The rejections that are failures (not files left out on purpose)."""
        return [r for r in self.rejected if r.failed]


@dataclass(frozen=True)
class SplitOptions:
    """How to split the converted items (see :func:`data_prep.splits.split_dataset`)."""

    folds: int = 5
    test_fraction: float = 0.2
    seed: int = 0
    fixed_test: frozenset[str] = frozenset()
    """Case IDs that must be held out (their patients and duplicates follow them)."""
    keep_folds: bool = False
    """Keep the ``fold`` the converter assigned (a dataset's own folds)."""


def _run(tasks: list[tuple[SourceCase, str]], workers: int) -> Iterator[_Outcome]:
    if workers <= 1:
        yield from map(_convert_one, tasks)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_convert_one, tasks, chunksize=4)


def _find_reusable(
    cases: Sequence[SourceCase], out: Path
) -> tuple[dict[str, dict[str, Any]], list[tuple[SourceCase, str]], list[Rejection]]:
    """The records of cases converted before, the cases left to convert and their skipped files.

    Raises:
        ValueError: If the converter produced duplicate case keys.
    """
    keys_seen = [case.key for case in cases]
    if len(set(keys_seen)) != len(keys_seen):
        raise ValueError("converter produced duplicate case keys")
    records: dict[str, dict[str, Any]] = {}
    todo = []
    skipped: list[Rejection] = []
    for case in cases:
        record = _reusable(case, out)
        if record is None:
            todo.append((case, str(out)))
        else:
            records[case.key] = record
            skipped.extend(
                Rejection(path, reason, SKIPPED) for path, reason in record.get("skipped", [])
            )
    return records, todo, skipped


def _convert_all(
    todo: list[tuple[SourceCase, str]],
    records: dict[str, dict[str, Any]],
    rejected: list[Rejection],
    *,
    total: int,
    workers: int,
    progress: bool,
) -> None:
    """Converts the cases left, adding their records and rejections."""
    reused = len(records)
    with tqdm(
        total=total, initial=reused, desc="converting", unit="case", disable=not progress
    ) as bar:
        for outcome in _run(todo, workers):
            if outcome.record is not None:
                records[outcome.key] = outcome.record
            rejected.extend(outcome.rejections)
            bar.update(1)


def _manifest(
    ordered: list[dict[str, Any]],
    rejected: list[Rejection],
    *,
    generator: str,
    header: Mapping[str, Any],
    split: SplitOptions,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The provenance of the conversion: options, split, each case's sources and outputs."""
    return {
        "generator": generator,
        "source": header.get("source"),
        "options": dict(options),
        "split": {
            "folds": split.folds,
            "test_fraction": split.test_fraction,
            "seed": split.seed,
            "fixed_test": sorted(split.fixed_test),
            "keep_folds": split.keep_folds,
        },
        "cases": [
            {
                "key": record["key"] if not header.get("deidentified") else None,
                "sources": record["sources"],
                "samples": [
                    {
                        "case_id": s["item"][keys.CASE_ID],
                        "image_sha256": s["image_sha256"],
                        "outputs": s["outputs"],
                    }
                    for s in record["samples"]
                ],
                "extras": record.get("extras", []),
            }
            for record in ordered
        ],
        "rejected": len(rejected),
        "failed": sum(1 for r in rejected if r.failed),
    }


def _write_split_datalist(
    out: Path,
    samples: list[dict[str, Any]],
    *,
    generator: str,
    header: Mapping[str, Any],
    split: SplitOptions,
) -> Path:
    """Splits the samples into folds and a held-out set and writes the datalist."""
    items = [dict(s["item"], source=header.get("source")) for s in samples]
    digests = [s["image_sha256"] for s in samples]
    training, testing = split_dataset(
        items,
        digests=digests,
        folds=split.folds,
        test_fraction=split.test_fraction,
        seed=split.seed,
        fixed_test=split.fixed_test,
        keep_folds=split.keep_folds,
    )
    full_header = {
        **header,
        "generator": generator,
        "labels": {"0": "background", "1": "nodule"},
        "axes": "x (lateral) first, y (depth) second; spacing [x_mm, y_mm], null when unknown",
        "folds": split.folds,
    }
    return write_datalist(out / "datalist.json", full_header, training, testing)


def convert_dataset(
    cases: Sequence[SourceCase],
    rejections: Iterable[Rejection],
    out_dir: str | Path,
    *,
    header: Mapping[str, Any],
    split: SplitOptions,
    options: Mapping[str, Any],
    workers: int = 1,
    progress: bool = True,
) -> ConversionResult:
    """Converts every case (reusing finished ones) and writes datalist, manifest and rejects.

    Args:
        cases: The cases found by a converter.
        rejections: Files the converter already refused while looking for cases.
        out_dir: Output folder.
        header: Dataset fields of the datalist (name, source, ``tirads_scheme``...).
        split: Folds and held-out set.
        options: The converter's options, recorded in the manifest.
        workers: Conversion processes.
        progress: Show a progress bar.

    Returns:
        Counts, rejections and the datalist path (``None`` when nothing converted).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, todo, skipped = _find_reusable(cases, out)
    rejected = [*rejections, *skipped]
    reused = len(records)
    _convert_all(todo, records, rejected, total=len(cases), workers=workers, progress=progress)
    ordered = [records[c.key] for c in cases if c.key in records]
    samples = [s for record in ordered for s in record["samples"]]
    case_ids = [s["item"][keys.CASE_ID] for s in samples]
    if len(set(case_ids)) != len(case_ids):
        duplicates = sorted({c for c in case_ids if case_ids.count(c) > 1})
        raise ValueError(f"case IDs are not unique: {duplicates[:5]}")
    _write_rejected(out / "rejected.csv", rejected)
    generator = f"thyroid_monai {thyroid_monai.__version__}"
    manifest = _manifest(
        ordered, rejected, generator=generator, header=header, split=split, options=options
    )
    write_json_atomic(out / "manifest.json", manifest)
    if not samples:
        return ConversionResult(None, len(todo), reused, rejected, 0)
    datalist = _write_split_datalist(out, samples, generator=generator, header=header, split=split)
    return ConversionResult(datalist, len(todo), reused, rejected, len(samples))


def _write_rejected(path: Path, rejected: Sequence[Rejection]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason", "stage"])
    writer.writerows([r.path, r.reason, r.stage] for r in sorted(rejected, key=lambda r: r.path))
    with atomic_path(path) as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")


def read_labels_csv(path: str | Path, key_columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """Reads a labels CSV into ``{key: row}``, keyed by the first of ``key_columns`` present.

    Raises:
        ValueError: If the file has none of the key columns or repeats a key (names the file).
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        key = next((c for c in key_columns if c in columns), None)
        if key is None:
            raise ValueError(f"{path}: a labels CSV needs one of the columns {list(key_columns)}")
        rows: dict[str, dict[str, str]] = {}
        for number, row in enumerate(reader, start=2):
            clean = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            value = clean[key]
            if value in rows:
                raise ValueError(f"{path}: line {number} repeats {key} {value!r}")
            rows[value] = clean
    return rows


DESCRIPTOR_COLUMNS = ("composition", "echogenicity", "shape", "margin", "foci")


def label_fields(row: Mapping[str, str], scheme: str, where: str) -> dict[str, Any]:
    """Datalist fields from one row of a labels CSV.

    Columns: ``tirads`` (a level of ``scheme``; empty means unknown), the ACR descriptor columns
    ``composition, echogenicity, shape, margin, foci`` (foci separated by ``;``; all four
    categories or none), ``pathology`` (``benign``/``malignant``).

    Raises:
        ConversionError: For a level or descriptor that the scheme does not define (names
            ``where``).
    """
    from thyroid_monai.tirads import AcrDescriptors, UnknownLabelError, normalise_level

    fields: dict[str, Any] = {}
    try:
        level = row.get("tirads", "")
        fields[keys.TIRADS] = normalise_level(level, scheme) if level else None  # type: ignore[arg-type]
        present = [c for c in DESCRIPTOR_COLUMNS[:4] if row.get(c)]
        if present:
            values: dict[str, Any] = {c: row.get(c, "") for c in DESCRIPTOR_COLUMNS[:4]}
            values["foci"] = [f.strip() for f in row.get("foci", "").split(";") if f.strip()]
            fields[keys.DESCRIPTORS] = AcrDescriptors.from_dict(values).to_dict()
    except UnknownLabelError as error:
        raise ConversionError(f"{where}: {error}") from None
    pathology = row.get("pathology", "").lower()
    if pathology:
        if pathology not in ("benign", "malignant"):
            raise ConversionError(
                f"{where}: pathology must be benign or malignant, got {pathology!r}"
            )
        fields[keys.PATHOLOGY] = pathology
    return fields
