"""DICOM fuzz campaign: damaged ultrasound exports through the reader, ``prep dicom`` and ``infer``.

Seed files: 16 valid ultrasound DICOM files of every photometric interpretation and transfer
syntax the reader supports (JPEG-LS and JPEG 2000 need the ``dicom`` extra), 1 to 4 frames, with
and without regions, the retired SOP class, an overlay, a graphics region over the name banner.
Each variant is a seed, made a new instance of the seed's patient, damaged one way
(:data:`MUTATIONS`: byte flips, truncations, deleted and inserted tags, wrong VRs and lengths,
absurd Rows/Columns/Bits/Frames, negative and huge region bounds, garbage and deeply nested
sequences, huge declared lengths, denormal spacing, group-0002 elements in the dataset, pixel
data longer or shorter than declared, absent Patient's Name, Birth Date and other type 2
attributes...); two more files are duplicate exports of a seed.

Every variant goes through three stages, single process:

1. ``read_ultrasound``: read, or rejected with a :class:`DicomReadError` naming the file;
2. ``prep dicom`` (de-identified) over the whole folder: every file converted or in
   ``rejected.csv`` with a stage and a reason, ``manifest.json`` written, no temporary file left,
   every output in the manifest present;
3. ``infer`` (a small untrained network; de-identified; DICOM SEG on): every file in
   ``summary.json``; every case folder complete (report, mask, overlay), no staging folder left.

Both output folders must pass the PHI audit and hold no byte of the seeds' fake identity.

Anything else (another exception type, an unnamed rejection, a missing outcome, a half-written
output, a file taking longer than ``--hang-seconds``) is a finding. The outcome table goes to
``benchmarks/results/dicom_fuzz.md`` and ``.json`` with the command that produced it.

    python benchmarks/dicom_fuzz.py --variants 10000        # the campaign (about an hour)
    python benchmarks/dicom_fuzz.py --variants 300 --out /tmp/fuzz   # a quick look

The suite runs a few hundred variants of the same generator (tests/unit/io/test_dicom_fuzz.py).
"""

from __future__ import annotations

import argparse
import collections
import copy
import io
import json
import shutil
import struct
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from thyroid_monai.io.dicom import DicomReadError, read_ultrasound
from thyroid_monai.io.dicom_write import PatientInfo, write_ultrasound_dicom
from thyroid_monai.io.files import atomic_path, write_json_atomic

RESULTS = Path(__file__).parent / "results"
REGION = (8, 12, 71, 59)
BANNER = (0, 0, 83, 9)  # a graphics region over the burned-in name banner
SPACING = (0.12, 0.09)


def _patient(index: int) -> PatientInfo:
    """The fake identity of seed ``index`` (its variants keep it)."""
    return PatientInfo.fake("FUZZ^PATIENT", f"MRN0FUZZ{index:02d}", "20240315", "101530")


def _frames(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:72, 0:84]
    stack = []
    for index in range(count):
        image = 90 + 60 * np.sin(x / 9.0 + rng.uniform(0, 3) + index) * np.cos(y / 11.0)
        frame = np.clip(image, 1, 254).astype(np.uint8)
        frame[1:8, 2:60] = 235  # the burned-in banner, outside the tissue region
        stack.append(frame)
    return np.stack(stack) if count > 1 else stack[0]


SEED_SPECS: list[dict[str, Any]] = [
    {"transfer_syntax": "explicit", "photometric": "MONOCHROME2", "frames": 1},
    {"transfer_syntax": "explicit", "photometric": "RGB", "frames": 2},
    {"transfer_syntax": "explicit", "photometric": "YBR_FULL", "frames": 1},
    {"transfer_syntax": "explicit", "photometric": "PALETTE COLOR", "frames": 1},
    {"transfer_syntax": "implicit", "photometric": "MONOCHROME2", "frames": 3},
    {"transfer_syntax": "rle", "photometric": "MONOCHROME2", "frames": 4},
    {"transfer_syntax": "rle", "photometric": "RGB", "frames": 1},
    {"transfer_syntax": "jpeg-baseline", "photometric": "YBR_FULL_422", "frames": 2},
    {"transfer_syntax": "jpeg-baseline", "photometric": "MONOCHROME2", "frames": 1},
    {"transfer_syntax": "jpeg-lossless", "photometric": "MONOCHROME2", "frames": 1},
    {"transfer_syntax": "jpeg-ls", "photometric": "MONOCHROME2", "frames": 2},
    {"transfer_syntax": "jpeg2000", "photometric": "RGB", "frames": 1},
    {"transfer_syntax": "explicit", "photometric": "MONOCHROME2", "frames": 1, "regions": []},
    {"transfer_syntax": "explicit", "photometric": "MONOCHROME2", "frames": 1,
     "retired_sop_class": True},
    {"transfer_syntax": "explicit", "photometric": "RGB", "frames": 1, "overlay": True},
    {"transfer_syntax": "explicit", "photometric": "MONOCHROME2", "frames": 1, "banner": True},
]  # fmt: skip
"""16 valid seeds (every photometric interpretation and transfer syntax the reader supports with
the ``dicom`` extra, 1-4 frames, no regions, the retired SOP class, an overlay, a graphics region
over the banner)."""


def write_seeds(folder: Path) -> list[Path]:
    """Writes the seed files and returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, spec in enumerate(SEED_SPECS):
        spec = dict(spec)
        frames = _frames(spec.pop("frames"), index)
        regions = spec.pop("regions", [REGION])
        banner = spec.pop("banner", False)
        syntax = spec.pop("transfer_syntax")
        path = folder / f"seed{index:02d}.dcm"
        write_ultrasound_dicom(path, frames, transfer_syntax=syntax, regions=regions,
                               spacing_mm=SPACING if regions else None, patient=_patient(index),
                               instance_number=index + 1, **spec)  # fmt: skip
        if not regions:  # a file without regions can be de-identified only without burned text
            dataset = pydicom.dcmread(path)
            dataset.BurnedInAnnotation = "NO"
            dataset.save_as(path, enforce_file_format=True)
        if banner:
            dataset = pydicom.dcmread(path)
            item = copy.deepcopy(dataset.SequenceOfUltrasoundRegions[0])
            item.RegionSpatialFormat, item.RegionDataType = 5, 0  # graphics
            (item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1,
             item.RegionLocationMaxY1) = BANNER  # fmt: skip
            dataset.SequenceOfUltrasoundRegions.append(item)
            dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- mutations ----------------------

Mutation = Callable[[bytes, np.random.Generator], bytes]


def _rewrite(data: bytes, change: Callable[[Dataset, np.random.Generator], None],
             rng: np.random.Generator) -> bytes:  # fmt: skip
    dataset = pydicom.dcmread(io.BytesIO(data))
    change(dataset, rng)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _raw(dataset: Dataset, keyword_or_tag: str | int, vr: str, value: bytes) -> None:
    tag = Tag(keyword_or_tag)
    dataset[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for position in rng.integers(132, len(out), size=int(rng.integers(1, 12))):
        out[position] = int(rng.integers(0, 256))
    return bytes(out)


def _flip_header_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    end = max(140, min(len(out), 1200))
    for position in rng.integers(132, end, size=int(rng.integers(1, 6))):
        out[position] = int(rng.integers(0, 256))
    return bytes(out)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _truncate_tail(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: len(data) - int(rng.integers(1, 64))]


def _delete_tag(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        tags = [t for t in list(ds.keys()) if t != 0x7FE00010]
        del ds[tags[int(rng.integers(0, len(tags)))]]

    return _rewrite(data, change, rng)


def _delete_required(data: bytes, rng: np.random.Generator) -> bytes:
    choices = ["Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation",
               "PixelData", "SOPClassUID", "SOPInstanceUID", "PatientID", "PatientName",
               "PatientBirthDate", "StudyInstanceUID"]  # fmt: skip

    def change(ds: Dataset, rng: np.random.Generator) -> None:
        keyword = choices[int(rng.integers(0, len(choices)))]
        if keyword in ds:
            delattr(ds, keyword)

    return _rewrite(data, change, rng)


_VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "PN", "SH", "SL",
        "SS", "ST", "TM", "UI", "UL", "US", "UT"]  # fmt: skip


def _insert_tag(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        group = int(rng.choice([0x0008, 0x0010, 0x0018, 0x0020, 0x0028, 0x0032, 0x0040]))
        tag = (group << 16) | int(rng.integers(1, 0xFFFF))
        vr = _VRS[int(rng.integers(0, len(_VRS)))]
        value = b"FUZZ^PATIENT" if rng.random() < 0.5 else bytes(rng.integers(0, 256, 7))
        _raw(ds, tag, vr, value)

    return _rewrite(data, change, rng)


def _wrong_vr(data: bytes, rng: np.random.Generator) -> bytes:
    targets = [
        "Rows",
        "Columns",
        "NumberOfFrames",
        "PatientName",
        "StudyDate",
        "PatientID",
        "SOPInstanceUID",
        "BitsAllocated",
        "PhotometricInterpretation",
        "StudyTime",
    ]
    keyword = targets[int(rng.integers(0, len(targets)))]

    def change(ds: Dataset, rng: np.random.Generator) -> None:
        vr = _VRS[int(rng.integers(0, len(_VRS)))]
        value = bytes(rng.integers(0, 256, int(rng.integers(1, 9))))
        _raw(ds, keyword, vr, value)

    return _rewrite(data, change, rng)


def _wrong_length(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        keyword = ["Rows", "Columns", "BitsStored", "PixelRepresentation"][int(rng.integers(0, 4))]
        _raw(ds, keyword, "US", b"\x01\x02\x03")  # US values are 2 bytes each

    return _rewrite(data, change, rng)


def _absurd_image(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        keyword = ["Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel",
                   "HighBit"][int(rng.integers(0, 6))]  # fmt: skip
        setattr(ds, keyword, int(rng.choice([0, 1, 3, 7, 9, 64, 255, 4096, 65535])))

    return _rewrite(data, change, rng)


def _absurd_frames(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        value = [b"-1", b"0", b"1000000000", b"99999999999", b"2.5", b"", b"abc", b"7"]
        _raw(ds, "NumberOfFrames", "IS", value[int(rng.integers(0, len(value)))])

    return _rewrite(data, change, rng)


def _region_bounds(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        if "SequenceOfUltrasoundRegions" not in ds:
            return
        item = ds.SequenceOfUltrasoundRegions[0]
        keyword = ["RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1",
                   "RegionLocationMaxY1"][int(rng.integers(0, 4))]  # fmt: skip
        value = int(rng.choice([-(2**31), -5, -1, 10**6, 2**31 - 1]))
        item[keyword].VR = "SL"
        setattr(item, keyword, value)

    return _rewrite(data, change, rng)


def _region_spacing(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        if "SequenceOfUltrasoundRegions" not in ds:
            ds.PixelSpacing = [5e-323, 5e-323]
            return
        item = ds.SequenceOfUltrasoundRegions[0]
        value = float(rng.choice([5e-323, 0.0, -0.01, 1e300, float("nan"), float("inf")]))
        item.PhysicalDeltaX = value

    return _rewrite(data, change, rng)


def _garbage_sequence(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        item = Dataset()
        item.PatientName = "FUZZ^PATIENT"
        _raw(item, 0x00189999, "UN", bytes(rng.integers(0, 256, 16)))
        keyword = [
            "ReferencedImageSequence",
            "SequenceOfUltrasoundRegions",
            "RequestAttributesSequence",
            "SourceImageSequence",
        ][int(rng.integers(0, 4))]
        setattr(ds, keyword, DicomSequence([item]))

    return _rewrite(data, change, rng)


def _deep_sequence(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        depth = int(rng.choice([20, 60, 150]))
        inner = Dataset()
        inner.PatientName = "FUZZ^PATIENT"
        for _ in range(depth):
            outer = Dataset()
            outer.ReferencedImageSequence = DicomSequence([inner])
            inner = outer
        ds.ReferencedImageSequence = inner.ReferencedImageSequence

    return _rewrite(data, change, rng)


def _huge_length(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for marker in (b"PN", b"LO", b"DA", b"UI", b"SQ", b"OB", b"OW", b"US"):
        start = out.find(marker, 132 + int(rng.integers(0, 200)))
        if start > 0 and rng.random() < 0.5:
            if marker in (b"SQ", b"OB", b"OW"):
                out[start + 4 : start + 8] = struct.pack("<I", 0xFFFFFFF0)
            else:
                out[start + 2 : start + 4] = struct.pack("<H", 0xFFFF)
            break
    return bytes(out)


def _meta_in_dataset(data: bytes, rng: np.random.Generator) -> bytes:
    """A file-meta element (Source AE Title) inside the dataset proper."""
    (meta_length,) = struct.unpack("<I", data[140:144])  # (0002,0000) UL, explicit VR LE
    start = 144 + meta_length
    implicit = b"1.2.840.10008.1.2\x00" in data[132:start]
    value = b"FUZZ_AE "
    element = (
        struct.pack("<HHI", 0x0002, 0x0016, len(value))
        if implicit
        else struct.pack("<HH", 0x0002, 0x0016) + b"AE" + struct.pack("<H", len(value))
    )
    # After the first dataset elements (pydicom would read a leading one as file meta).
    position = data.find(b"\x08\x00\x16\x00", start)
    position = position if position > 0 else start
    return data[:position] + element + value + data[position:]


def _long_pixels(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.PixelData = ds.PixelData + bytes(int(rng.integers(2, 5000)))

    return _rewrite(data, change, rng)


def _short_pixels(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.PixelData = ds.PixelData[: int(rng.integers(0, len(ds.PixelData)))]

    return _rewrite(data, change, rng)


def _damaged_fragment(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            return
        raw = bytearray(ds.PixelData)
        for position in rng.integers(max(len(raw) // 2, 16), len(raw), size=8):
            raw[position] = int(rng.integers(0, 256))
        ds.PixelData = bytes(raw)

    return _rewrite(data, change, rng)


def _wrong_photometric(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        ds.PhotometricInterpretation = str(rng.choice(
            ["RGB", "MONOCHROME1", "YBR_FULL", "PALETTE COLOR", "HSV", "YBR_ICT", ""]))  # fmt: skip

    return _rewrite(data, change, rng)


def _wrong_sop_class(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        ds.SOPClassUID = str(rng.choice([
            "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3", "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.5.1.4.1.1.66.4", "1.2.3.FUZZ^PATIENT", ""]))  # fmt: skip

    return _rewrite(data, change, rng)


def _odd_identity(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "AccessionNumber", "ReferringPhysicianName", "StudyID"):  # fmt: skip
            if keyword in ds and rng.random() < 0.5:
                delattr(ds, keyword)

    return _rewrite(data, change, rng)


def _identifying_extras(data: bytes, rng: np.random.Generator) -> bytes:
    def change(ds: Dataset, rng: np.random.Generator) -> None:
        ds.InstanceCreationDate, ds.InstanceCreationTime = "20240315", "101530"
        ds.StationAETitle = ds.RetrieveAETitle = "FUZZ_AE"
        ds.AcquisitionUID = "1.2.3.4.5"
        ds.BodyPartExamined = "FUZZ PATIENT"  # not in the table: removed by default
        ds.file_meta.SourceApplicationEntityTitle = "FUZZ_AE"

    return _rewrite(data, change, rng)


def _random_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    return bytes(rng.integers(0, 256, int(rng.integers(0, 3000))))


MUTATIONS: dict[str, Mutation] = {
    "flip bytes": _flip_bytes,
    "flip header bytes": _flip_header_bytes,
    "truncate": _truncate,
    "truncate tail": _truncate_tail,
    "delete tag": _delete_tag,
    "delete required tag": _delete_required,
    "insert tag": _insert_tag,
    "wrong VR": _wrong_vr,
    "wrong length": _wrong_length,
    "absurd image size or bits": _absurd_image,
    "absurd NumberOfFrames": _absurd_frames,
    "region bounds": _region_bounds,
    "region spacing": _region_spacing,
    "garbage sequence": _garbage_sequence,
    "deep sequence": _deep_sequence,
    "huge declared length": _huge_length,
    "group 0002 in dataset": _meta_in_dataset,
    "pixel data too long": _long_pixels,
    "pixel data too short": _short_pixels,
    "damaged fragment": _damaged_fragment,
    "wrong photometric": _wrong_photometric,
    "other SOP class": _wrong_sop_class,
    "absent type 2 identity": _odd_identity,
    "identifying extras": _identifying_extras,
    "random bytes": _random_bytes,
}
"""25 kinds of damage."""


def _new_instance(data: bytes, index: int, patient: str) -> bytes:
    """The seed as another instance (its own SOP Instance UID) of the seed's patient.

    One patient per seed: variants of a seed share its pixels, and the splits keep identical
    images with one patient.
    """
    dataset = pydicom.dcmread(io.BytesIO(data))
    uid = pydicom.uid.generate_uid(entropy_srcs=["dicom_fuzz", str(index)])
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = uid
    dataset.PatientID = patient
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class Variant:
    """One file of the campaign: its name, the seed, the mutation (``None``: a valid seed copy)."""

    path: Path
    seed: str
    mutation: str | None


def make_variants(seeds: list[Path], folder: Path, count: int, *, seed: int = 0,
                  duplicates: int = 2) -> list[Variant]:  # fmt: skip
    """Writes the seeds (valid), ``duplicates`` duplicate exports and ``count`` damaged variants.

    A mutation that itself fails on a seed (a change the seed has nothing to apply to) is drawn
    again; the variant's bytes are whatever the mutation produced, valid or not.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    variants = []
    for path in seeds:
        target = folder / f"valid_{path.name}"
        shutil.copyfile(path, target)
        variants.append(Variant(target, path.name, None))
    for index in range(duplicates):
        source = seeds[index % len(seeds)]
        target = folder / f"x_duplicate{index}_{source.name}"  # after the original
        shutil.copyfile(source, target)
        variants.append(Variant(target, source.name, "duplicate export"))
    names = list(MUTATIONS)
    made, attempts = 0, 0
    while made < count:
        number = int(rng.integers(0, len(seeds)))
        source = seeds[number]
        name = names[(made + attempts // 20) % len(names)]
        try:
            base = _new_instance(source.read_bytes(), made, f"MRN0FUZZ{number:02d}")
            data = MUTATIONS[name](base, rng)
        except Exception:  # nothing to apply to on this seed: draw again (another kind after 20)
            attempts += 1
            continue
        attempts = 0
        target = folder / f"v{made:05d}_{name.replace(' ', '_')}.dcm"
        target.write_bytes(data)
        variants.append(Variant(target, source.name, name))
        made += 1
    return variants


# ---------------------------------------------------------------- the campaign -------------------


@dataclass
class Findings:
    """Outcome counts per mutation and stage, and everything that should not happen."""

    outcomes: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    problems: list[str] = field(default_factory=list)
    slowest: dict[str, float] = field(default_factory=dict)

    def count(self, variant: Variant, outcome: str) -> None:
        """Counts one outcome of one variant."""
        self.outcomes[variant.mutation or "valid seed"][outcome] += 1


def run_reader(variants: list[Variant], findings: Findings, hang_seconds: float) -> None:
    """Stage 1: ``read_ultrasound`` on every variant."""
    for variant in variants:
        started = time.perf_counter()
        try:
            read_ultrasound(variant.path, frames="all")
            outcome = "read: ok"
        except DicomReadError as error:
            outcome = "read: rejected"
            if str(variant.path) not in str(error):
                findings.problems.append(f"{variant.path.name}: rejection does not name the file")
        except Exception as error:  # a crash is what the campaign looks for
            outcome = "read: CRASH"
            findings.problems.append(f"{variant.path.name}: read_ultrasound {type(error).__name__}")
        elapsed = time.perf_counter() - started
        findings.slowest["read"] = max(findings.slowest.get("read", 0.0), elapsed)
        if elapsed > hang_seconds:
            findings.problems.append(f"{variant.path.name}: read took {elapsed:.1f} s")
        findings.count(variant, outcome)


IDENTITY = (b"FUZZ^PATIENT", b"FUZZ PATIENT", b"MRN0FUZZ", b"FUZZ_AE")
"""The seeds' fake identity: no output byte may hold it (file names in rejected.csv aside)."""


def _no_leftovers(folder: Path, findings: Findings, stage: str) -> None:
    leftovers = [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]
    findings.problems.extend(f"{stage}: half-written output {p.name}" for p in leftovers)
    for path in (p for p in folder.rglob("*") if p.is_file() and p.name != "rejected.csv"):
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            import gzip

            data = gzip.decompress(data)
        if any(value in data for value in IDENTITY):
            findings.problems.append(f"{stage}: {path.relative_to(folder)} holds the identity")


def _audit(folder: Path, findings: Findings, stage: str) -> None:
    from data_prep.audit import audit_folder

    report = audit_folder(folder)
    findings.problems.extend(f"{stage} audit: {problem}" for problem in report.problems)


def run_prep(variants: list[Variant], source: Path, out: Path, findings: Findings) -> int:
    """Stage 2: ``prep dicom`` over the folder; every file converted or rejected with a reason."""
    from thyroid_monai.cli import main

    try:
        code = main(["prep", "dicom", "--in", str(source), "--out", str(out), "--salt", "fuzz",
                     "--folds", "2", "--test-fraction", "0", "--no-progress"])  # fmt: skip
    except BaseException as error:  # the command itself must never crash
        findings.problems.append(f"prep dicom: {type(error).__name__}")
        return -1
    rejected = {}
    if (out / "rejected.csv").is_file():
        import csv

        with (out / "rejected.csv").open(newline="", encoding="utf-8") as handle:
            rejected = {row["path"]: row for row in csv.DictReader(handle)}
    else:
        findings.problems.append("prep dicom: no rejected.csv")
    if not (out / "manifest.json").is_file():
        findings.problems.append("prep dicom: no manifest.json")
        converted = 0
    else:
        manifest = json.loads((out / "manifest.json").read_text())
        converted = sum(1 for _ in manifest["cases"])
        for case in manifest["cases"]:
            for output in [o for s in case["samples"] for o in s["outputs"]] + case["extras"]:
                if not (out / output["path"]).is_file():
                    findings.problems.append(f"prep dicom: listed output missing {output['path']}")
    for variant in variants:
        row = rejected.get(variant.path.name)
        if row is None:
            findings.count(variant, "prep: converted")
        else:
            findings.count(variant, f"prep: rejected ({row['stage']})")
            if not row["reason"].strip():
                findings.problems.append(f"prep dicom: {variant.path.name} rejected without reason")
    _audit(out, findings, "prep dicom")
    if converted != sum(1 for v in variants if v.path.name not in rejected):
        findings.problems.append(
            f"prep dicom: {converted} cases in the manifest, "
            f"{sum(1 for v in variants if v.path.name not in rejected)} files not rejected"
        )
    _no_leftovers(out, findings, "prep dicom")
    return code


def tiny_model(folder: Path) -> Any:
    """An untrained small network as an :class:`~thyroid_monai.inference.InferenceModel`."""
    import torch

    from thyroid_monai.inference import checkpoint_model
    from thyroid_monai.networks import MultitaskUNet

    torch.manual_seed(0)
    network = MultitaskUNet(num_classes=5, seg_classes=2, embedding_dim=16).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / "model.pt")
    fresh = MultitaskUNet(num_classes=5, seg_classes=2, embedding_dim=16)
    return checkpoint_model(fresh, folder / "model.pt", image_size=(32, 32), label_grouping="acr5")


def run_infer(variants: list[Variant], source: Path, out: Path, model: Any,
              findings: Findings) -> None:  # fmt: skip
    """Stage 3: ``infer`` (de-identified, SEG on) over the folder; every file has an outcome."""
    from thyroid_monai.inference import InferenceSettings, run_inference
    from thyroid_monai.io.deid import DeidentificationOptions

    try:
        summary = run_inference(model, source, out, deid=DeidentificationOptions(salt="fuzz"),
                                settings=InferenceSettings())  # fmt: skip
    except BaseException as error:  # the run itself must never crash
        findings.problems.append(f"infer: {type(error).__name__}")
        return
    saved = json.loads((out / "summary.json").read_text())
    if len(saved["files"]) != len(variants):
        findings.problems.append(f"infer: {len(saved['files'])} outcomes for {len(variants)} files")
    by_path = {path: error for path, error in summary.failed}
    skipped = {path for path, _ in summary.skipped}
    for variant in variants:
        if variant.path in by_path:
            stage = by_path[variant.path].rsplit("(stage ", 1)[-1].rstrip(")")
            findings.count(variant, f"infer: failed ({stage})")
        elif variant.path in skipped:
            findings.count(variant, "infer: skipped")
        else:
            findings.count(variant, "infer: written")
    for entry in saved["written"]:
        folder = out / entry["case"]
        for name in ("report.json", "mask.nii.gz", "overlay.png"):
            if not (folder / name).is_file():
                findings.problems.append(f"infer: {entry['case']} lacks {name}")
    _no_leftovers(out, findings, "infer")
    _audit(out, findings, "infer")


def campaign(work: Path, variants_count: int, *, seed: int = 0, hang_seconds: float = 10.0,
             stages: tuple[str, ...] = ("read", "prep", "infer")) -> Findings:  # fmt: skip
    """Runs the campaign in ``work`` (seeds, variants, outputs) and returns the findings."""
    seeds = write_seeds(work / "seeds")
    variants = make_variants(seeds, work / "variants", variants_count, seed=seed)
    findings = Findings()
    timings = {}
    if "read" in stages:
        started = time.perf_counter()
        run_reader(variants, findings, hang_seconds)
        timings["read"] = time.perf_counter() - started
    if "prep" in stages:
        started = time.perf_counter()
        run_prep(variants, work / "variants", work / "prep", findings)
        timings["prep"] = time.perf_counter() - started
    if "infer" in stages:
        model = tiny_model(work / "model")
        started = time.perf_counter()
        run_infer(variants, work / "variants", work / "infer", model, findings)
        timings["infer"] = time.perf_counter() - started
    findings.slowest.update({f"{k} (whole stage)": v for k, v in timings.items()})
    return findings


def outcome_table(findings: Findings) -> str:
    """The outcome counts as a Markdown table (mutation x outcome)."""
    columns = sorted({o for counter in findings.outcomes.values() for o in counter})
    lines = ["| mutation | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]  # fmt: skip
    for mutation in sorted(findings.outcomes):
        counter = findings.outcomes[mutation]
        lines.append(
            f"| {mutation} | " + " | ".join(str(counter.get(c, 0)) for c in columns) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Findings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=10000, help="damaged variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--hang-seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the table goes")
    parser.add_argument("--stages", nargs="+", default=["read", "prep", "infer"])
    args = parser.parse_args(argv)
    import tempfile

    warnings.simplefilter("ignore")
    work = args.out or Path(tempfile.mkdtemp(prefix="dicom_fuzz_"))
    started = time.perf_counter()
    findings = campaign(work, args.variants, seed=args.seed, hang_seconds=args.hang_seconds,
                        stages=tuple(args.stages))  # fmt: skip
    elapsed = time.perf_counter() - started
    command = "python benchmarks/dicom_fuzz.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    table = outcome_table(findings)
    args.results.mkdir(parents=True, exist_ok=True)
    report = {
        "command": command.strip(),
        "variants": args.variants,
        "seed_files": len(SEED_SPECS),
        "mutations": len(MUTATIONS),
        "elapsed_s": round(elapsed, 1),
        "slowest_s": {k: round(v, 3) for k, v in findings.slowest.items()},
        "problems": findings.problems,
        "outcomes": {k: dict(v) for k, v in sorted(findings.outcomes.items())},
    }
    write_json_atomic(args.results / "dicom_fuzz.json", report)
    with atomic_path(args.results / "dicom_fuzz.md") as temporary:
        temporary.write_text(
            f"# DICOM fuzz campaign\n\n`{command.strip()}`: {args.variants} damaged variants of "
            f"{len(SEED_SPECS)} valid seeds ({len(MUTATIONS)} kinds of damage), "
            f"{elapsed:.0f} s, single process.\n\n"
            "Problems (crashes, unnamed rejections, missing outcomes, half-written outputs, "
            f"hangs): {len(findings.problems)}\n\n{table}\n"
        )
    print(table)
    print(f"{len(findings.problems)} problems; {elapsed:.0f} s; tables in {args.results}")
    for problem in findings.problems[:50]:
        print("  " + problem)
    return findings


if __name__ == "__main__":
    sys.exit(1 if main().problems else 0)
