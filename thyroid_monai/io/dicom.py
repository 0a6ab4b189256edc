"""Reading ultrasound DICOM: frames, colour to grayscale, spacing and crop from the US regions.

An exported ultrasound image is a full screen capture: the tissue image sits inside a frame that
carries rulers, presets and burned-in patient text. The Sequence of Ultrasound Regions
(0018,6011) says where the tissue image is and how large its pixels are, separately in x and y.
:func:`read_ultrasound` uses it as follows:

1. choose the 2D tissue regions (``RegionSpatialFormat`` 1 = 2D, ``RegionDataType`` 1 = tissue);
   with several (a dual view), ``region="largest"`` takes the largest, an integer the n-th;
2. spacing: the region's ``PhysicalDeltaX/Y`` when both units are centimetres (code 3), converted
   to millimetres; else ``PixelSpacing`` (row spacing first, so x is its second value); else
   unknown (``None``). Spacing is never assumed to be 1 mm;
3. crop every frame to the region bounds (inclusive, as DICOM defines them).

Before anything is decoded or allocated the reader checks what it derives from the header: the
image size (1 to 65535 rows and columns), the number of frames (a whole number of at least 1,
absent or empty meaning 1, and no more than the pixel data can hold: the byte length of native
data, the fragment count of encapsulated data), native pixel data no longer than the header
declares, every region's bounds (non-negative, inside the image, not inverted) and the spacing
(:data:`SPACING_RANGE_MM`). A file that fails a check is rejected with the reason; messages name
the file and the problem and never an element's value (:mod:`thyroid_monai.io.errors`).

Colour is converted to grayscale: RGB (and YBR that a codec returns as RGB) by ITU-R BT.601 luma,
YBR_FULL and YBR_FULL_422 by taking the Y channel (which is that luma), PALETTE COLOR through its
lookup table, MONOCHROME1 by inverting. Samples wider than 8 bits are scaled to 8 bits by
dropping the low bits, since the pipeline works on 8-bit B-mode images.

Compressed transfer syntaxes are decoded by pydicom's plugins: RLE and (through Pillow) JPEG
Baseline and JPEG 2000 work out of the box; JPEG Lossless, JPEG-LS and the others need the
``dicom`` extra. A syntax without an available decoder raises :class:`MissingCodecError`, which
names the syntax and the extra.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import UID

from thyroid_monai.io.errors import SafeMessageError, safe_reason

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE_STORAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
US_MULTIFRAME_IMAGE_STORAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.3"
ULTRASOUND_SOP_CLASSES = frozenset(
    {
        US_IMAGE_STORAGE,
        US_MULTIFRAME_IMAGE_STORAGE,
        US_IMAGE_STORAGE_RETIRED,
        US_MULTIFRAME_IMAGE_STORAGE_RETIRED,
    }
)
"""US Image Storage and US Multi-frame Image Storage, current and retired UIDs."""

DICOM_EXTRA_HINT = "install the 'dicom' extra: pip install 'thyroid-monai[dicom]'"

REGION_FORMAT_2D = 1
REGION_DATA_TISSUE = 1
IMAGE_REGION_FORMATS = frozenset({1, 2, 3})
"""RegionSpatialFormat of image regions: 2D, M-mode, spectral (4 waveform, 5 graphics are not)."""
IMAGE_DATA_TYPES = frozenset({1, 2, 3, 4})
"""RegionDataType of image data: tissue, colour flow, PW and CW Doppler spectrum."""
UNITS_CM = 3

SPACING_RANGE_MM = (1e-3, 10.0)
"""Plausible pixel sizes in mm: ultrasound pixels are tens of micrometres to about a millimetre;
values outside (a denormal 5e-323, 1 m per pixel) are damage, and break NIfTI and radiomics."""

MAX_IMAGE_SIDE = 65535
"""Rows and Columns are US (unsigned 16-bit) values."""

FramePolicy = Literal["all", "middle", "first"] | int
"""Which frames of a multi-frame image to keep: all, the middle one, the first, or a frame number
(1-based, as DICOM numbers frames)."""

RegionPolicy = Literal["largest"] | int
"""Which 2D tissue region to use when there are several: the largest, or the n-th (0-based)."""

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights, the same as the Y of DICOM's YBR_FULL."""


class DicomReadError(SafeMessageError):
    """A file that is not a readable ultrasound image; the message names the file and why."""


class MissingCodecError(DicomReadError):
    """Pixel data in a transfer syntax for which no decoder is installed."""


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions.

    Attributes:
        bounds: ``(min_x, min_y, max_x, max_y)``, inclusive pixel coordinates.
        spatial_format: ``RegionSpatialFormat`` (1 = 2D, 2 = M-mode, 3 = spectral...).
        data_type: ``RegionDataType`` (1 = tissue, 2 = colour flow...).
        units: ``(PhysicalUnitsXDirection, PhysicalUnitsYDirection)``; 3 means centimetres.
        delta: ``(PhysicalDeltaX, PhysicalDeltaY)`` in those units per pixel.
    """

    bounds: tuple[int, int, int, int]
    spatial_format: int
    data_type: int
    units: tuple[int, int]
    delta: tuple[float, float]

    @classmethod
    def from_item(cls, item: Dataset) -> UltrasoundRegion:
        """Parses a region item; raises ``ValueError`` naming a missing or bad attribute."""
        try:
            bounds = (
                int(item.RegionLocationMinX0),
                int(item.RegionLocationMinY0),
                int(item.RegionLocationMaxX1),
                int(item.RegionLocationMaxY1),
            )
        except AttributeError:
            raise ValueError("ultrasound region without its bounds") from None
        except (TypeError, ValueError):
            raise ValueError("ultrasound region with bounds that are not numbers") from None
        if min(bounds) < 0:
            raise ValueError("ultrasound region with negative bounds")
        if bounds[0] > bounds[2] or bounds[1] > bounds[3]:
            raise ValueError("ultrasound region with inverted bounds")
        return cls(
            bounds=bounds,
            spatial_format=int(item.get("RegionSpatialFormat", 0)),
            data_type=int(item.get("RegionDataType", 0)),
            units=(
                int(item.get("PhysicalUnitsXDirection", 0)),
                int(item.get("PhysicalUnitsYDirection", 0)),
            ),
            delta=(
                float(item.get("PhysicalDeltaX", 0.0)),
                float(item.get("PhysicalDeltaY", 0.0)),
            ),
        )

    @property
    def is_2d_tissue(self) -> bool:
        """A 2D B-mode tissue region (the image a nodule is measured on)."""
        return self.spatial_format == REGION_FORMAT_2D and self.data_type == REGION_DATA_TISSUE

    @property
    def area(self) -> int:
        """Number of pixels inside the bounds."""
        return (self.bounds[2] - self.bounds[0] + 1) * (self.bounds[3] - self.bounds[1] + 1)

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """``(x, y)`` pixel size in mm when both axes are in centimetres, else ``None``.

        Some vendors write a negative delta for a flipped axis; the size is its magnitude.
        """
        if self.units != (UNITS_CM, UNITS_CM):
            return None
        dx, dy = (abs(d) * 10.0 for d in self.delta)
        if dx == 0 or dy == 0:
            return None  # a zero delta is how some exports say "not calibrated"
        return (dx, dy)

    @property
    def is_image(self) -> bool:
        """A region showing anatomy or flow, not graphics, traces or colour bars.

        2D, M-mode or spectral regions of tissue, colour-flow or Doppler data. De-identification
        keeps the pixels of these regions only.
        """
        return self.spatial_format in IMAGE_REGION_FORMATS and self.data_type in IMAGE_DATA_TYPES


@dataclass(frozen=True)
class UltrasoundFrame:
    """One grayscale frame: ``number`` is the 1-based DICOM frame number."""

    number: int
    image: np.ndarray


@dataclass
class UltrasoundImage:
    """What :func:`read_ultrasound` extracts from one file.

    Attributes:
        path: The file read.
        sop_class_uid: SOP Class UID.
        sop_instance_uid: SOP Instance UID.
        transfer_syntax: Transfer Syntax UID of the pixel data.
        photometric: Photometric interpretation as stored.
        frames: The kept frames, grayscale ``uint8`` ``(rows, columns)``, cropped.
        number_of_frames: Frames in the file.
        spacing_mm: ``(x, y)`` pixel spacing in mm, or ``None`` when unknown.
        spacing_source: ``"regions"``, ``"pixel_spacing"`` or ``None``.
        region: The tissue region used (``None`` if the file has none).
        crop: ``(min_x, min_y, max_x, max_y)`` of the kept part of the frame, inclusive.
        regions: Every region of the file.
        dataset: The header (pixel data included as read).
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    photometric: str
    frames: list[UltrasoundFrame]
    number_of_frames: int
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    region: UltrasoundRegion | None
    crop: tuple[int, int, int, int]
    regions: list[UltrasoundRegion] = field(default_factory=list)
    dataset: Dataset | None = None

    def crop_array(self, array: np.ndarray) -> np.ndarray:
        """Crops a full-frame array (a mask drawn on the original frame) like the frames."""
        min_x, min_y, max_x, max_y = self.crop
        return array[..., min_y : max_y + 1, min_x : max_x + 1]


def _fail(path: Path, problem: str) -> DicomReadError:
    return DicomReadError(f"{path}: {problem}")


def read_dataset(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Reads a DICOM Part 10 file, turning every pydicom failure into a :class:`DicomReadError`."""
    path = Path(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise _fail(path, "not a DICOM file (no 'DICM' preamble)") from None
    except (OSError, EOFError) as error:
        raise _fail(path, f"cannot be read ({safe_reason(error)})") from None
    except Exception as error:  # pydicom raises many types for damaged headers
        raise _fail(path, f"damaged DICOM header ({safe_reason(error)})") from None


def sop_class_name(uid: str) -> str:
    """The registered name of a SOP Class UID, or ``"an unregistered UID"``.

    An unregistered value is not repeated: in a damaged file it may be any element's bytes.
    """
    name = UID(uid).name
    return name if name and name != uid else "an unregistered UID"


def ultrasound_regions(dataset: Dataset) -> list[UltrasoundRegion]:
    """The items of the Sequence of Ultrasound Regions (empty if the file has none)."""
    return [
        UltrasoundRegion.from_item(item) for item in dataset.get("SequenceOfUltrasoundRegions", [])
    ]


def choose_region(
    regions: Sequence[UltrasoundRegion], policy: RegionPolicy = "largest"
) -> UltrasoundRegion | None:
    """The 2D tissue region to use, or ``None`` if there is none.

    Raises:
        ValueError: If an integer policy names a region that does not exist.
    """
    tissue = [r for r in regions if r.is_2d_tissue]
    if not tissue:
        return None
    if policy == "largest":
        # Ties keep the first, so the result does not depend on sorting stability.
        return max(tissue, key=lambda r: r.area)
    if isinstance(policy, int) and not isinstance(policy, bool):
        if not 0 <= policy < len(tissue):
            raise ValueError(f"region {policy} requested but there are {len(tissue)} 2D regions")
        return tissue[policy]
    raise ValueError(f"unknown region policy {policy!r}; use 'largest' or an index")


def pixel_spacing_mm(dataset: Dataset) -> tuple[float, float] | None:
    """``(x, y)`` from ``PixelSpacing`` (stored row spacing first), or ``None``."""
    values = dataset.get("PixelSpacing")
    if values is None or isinstance(values, str | bytes) or len(values) != 2:
        return None
    row_spacing, column_spacing = (abs(float(v)) for v in values)
    if row_spacing == 0 or column_spacing == 0:
        return None
    return (column_spacing, row_spacing)


def spacing_is_physical(spacing: tuple[float, float]) -> bool:
    """Both sizes are finite and inside :data:`SPACING_RANGE_MM`."""
    low, high = SPACING_RANGE_MM
    return all(math.isfinite(v) and low <= v <= high for v in spacing)


def frame_count(dataset: Dataset) -> int:
    """``NumberOfFrames`` as a whole number >= 1 (absent or empty: 1).

    Raises:
        ValueError: For a value that is not a whole number of at least 1.
    """
    value = dataset.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("NumberOfFrames is not a number") from None
    if not math.isfinite(number) or number != int(number) or number < 1:
        raise ValueError("NumberOfFrames is not a whole number of at least 1")
    return int(number)


def select_frames(count: int, policy: FramePolicy) -> list[int]:
    """0-based indices of the frames a policy keeps.

    Raises:
        ValueError: For an unknown policy or a frame number outside ``1..count``.
    """
    if policy == "all":
        return list(range(count))
    if policy == "middle":
        return [(count - 1) // 2]
    if policy == "first":
        return [0]
    if isinstance(policy, int) and not isinstance(policy, bool):
        if not 1 <= policy <= count:
            raise ValueError(f"frame {policy} requested but the image has {count} frames")
        return [policy - 1]
    raise ValueError(f"unknown frame policy {policy!r}; use all, middle, first or a frame number")


def parse_frame_policy(text: str) -> FramePolicy:
    """Parses a command-line frame policy: ``all``, ``middle``, ``first`` or a number."""
    if text in ("all", "middle", "first"):
        return text  # type: ignore[return-value]
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"frame policy {text!r}: use all, middle, first or a frame number"
        ) from None


def to_grayscale(pixels: np.ndarray, photometric: str, dataset: Dataset) -> np.ndarray:
    """Converts decoded pixels of one frame to ``uint8`` grayscale ``(rows, columns)``.

    Args:
        pixels: One decoded frame, ``(rows, columns)`` or ``(rows, columns, 3)``.
        photometric: The interpretation of ``pixels`` as the decoder returned them.
        dataset: The header (palette lookup tables, bit depth).

    Raises:
        ValueError: For an interpretation this reader does not handle.
    """
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset).astype(np.float64)
        entry_bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        rgb /= float(2**entry_bits - 1)
        gray = rgb @ np.asarray(LUMA_WEIGHTS) * 255.0
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(
                f"{photometric} pixels should have 3 samples, got shape {pixels.shape}"
            )
        if photometric == "RGB":
            gray = pixels.astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
        else:
            gray = pixels[..., 0].astype(np.float64)
        return _to_uint8(np.rint(gray), int(dataset.get("BitsStored", 8)))
    if photometric in ("MONOCHROME2", "MONOCHROME1"):
        if pixels.ndim != 2:
            raise ValueError(f"{photometric} pixels should be 2D, got shape {pixels.shape}")
        bits = int(dataset.get("BitsStored", 8))
        gray8 = _to_uint8(pixels.astype(np.float64), bits)
        return (255 - gray8).astype(np.uint8) if photometric == "MONOCHROME1" else gray8
    raise ValueError(f"photometric interpretation {photometric!r} is not supported")


def _to_uint8(values: np.ndarray, bits_stored: int) -> np.ndarray:
    if bits_stored > 8:
        values = np.floor(values / float(2 ** (bits_stored - 8)))
    return np.clip(values, 0, 255).astype(np.uint8)


def _image_size(path: Path, dataset: Dataset) -> tuple[int, int, int, int]:
    """``(rows, columns, samples per pixel, bytes per sample)``, checked."""
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples, bits = int(dataset.SamplesPerPixel), int(dataset.BitsAllocated)
    except (TypeError, ValueError, AttributeError):
        problem = "Rows, Columns, SamplesPerPixel or BitsAllocated is not a number"
        raise _fail(path, problem) from None
    if not (1 <= rows <= MAX_IMAGE_SIDE and 1 <= columns <= MAX_IMAGE_SIDE):
        raise _fail(path, f"image size {columns}x{rows} is outside 1..{MAX_IMAGE_SIDE}")
    if samples not in (1, 3):
        raise _fail(path, "SamplesPerPixel must be 1 or 3")
    if bits not in (8, 16):
        raise _fail(path, "BitsAllocated must be 8 or 16")
    return rows, columns, samples, bits // 8


def _check_frames_fit(path: Path, dataset: Dataset, count: int) -> None:
    """The pixel data can hold ``count`` frames (checked before any frame list is built)."""
    rows, columns, samples, width = _image_size(path, dataset)
    data = dataset.PixelData
    if not isinstance(data, bytes | bytearray):
        raise _fail(path, "pixel data is not a byte string")
    syntax = UID(dataset.file_meta.get("TransferSyntaxUID", ""))
    if syntax.is_encapsulated:
        try:
            items, _ = parse_fragments(data)
        except Exception:  # a damaged item tag or length anywhere in the fragments
            raise _fail(path, "encapsulated pixel data has damaged fragments") from None
        if count > max(items - 1, 0):  # the first item is the Basic Offset Table
            raise _fail(path, f"NumberOfFrames ({count}) exceeds the pixel data's fragments")
        return
    frame_bytes = rows * columns * samples * width
    expected = frame_bytes * count
    if len(data) < expected:
        raise _fail(path, f"pixel data too short for {count} frame(s) of {columns}x{rows}")
    if len(data) > expected + 1:  # one padding byte makes an odd length even
        raise _fail(path, "pixel data longer than Rows x Columns x NumberOfFrames declare")


def _check_image_header(path: Path, dataset: Dataset) -> None:
    sop_class = str(
        dataset.get("SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", "")
    )
    if not sop_class:
        raise _fail(path, "no SOP Class UID: not a DICOM image")
    if sop_class not in ULTRASOUND_SOP_CLASSES:
        raise _fail(path, f"not an ultrasound image (SOP class {sop_class_name(sop_class)})")
    missing = [
        keyword
        for keyword in (
            "Rows",
            "Columns",
            "SamplesPerPixel",
            "BitsAllocated",
            "PhotometricInterpretation",
        )
        if dataset.get(keyword) in (None, "")
    ]
    if missing:
        raise _fail(path, f"image attributes missing: {', '.join(missing)}")
    if "PixelData" not in dataset:
        raise _fail(path, "no pixel data")
    if "SOPInstanceUID" in dataset and not is_valid_uid(dataset.SOPInstanceUID):
        raise _fail(path, "SOP Instance UID is not a valid UID")


_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: object) -> bool:
    """A UID of the UI VR: digits and dots, no leading zeros, at most 64 characters."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_PATTERN.match(value))


def _decoder_for(path: Path, dataset: Dataset) -> Any:
    syntax = UID(dataset.file_meta.get("TransferSyntaxUID", ""))
    if not syntax:
        raise _fail(path, "no transfer syntax in the file meta information")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise MissingCodecError(
            f"{path}: transfer syntax {syntax.name} ({syntax}) cannot be decoded by any "
            f"installed plugin; {DICOM_EXTRA_HINT}"
        ) from None
    if not decoder.is_available:
        raise MissingCodecError(
            f"{path}: transfer syntax {syntax.name} ({syntax}) needs a decoder plugin that is "
            f"not installed; {DICOM_EXTRA_HINT}"
        )
    return decoder


def read_ultrasound(
    path: str | Path,
    *,
    frames: FramePolicy = "all",
    region: RegionPolicy = "largest",
    crop: bool = True,
) -> UltrasoundImage:
    """Reads an ultrasound DICOM file into cropped grayscale frames with their spacing.

    Args:
        path: The file.
        frames: Which frames to keep (see :data:`FramePolicy`).
        region: Which 2D tissue region to use when there are several.
        crop: Crop to the region bounds (the whole frame is kept when there is no region).

    Returns:
        The frames, spacing and provenance.

    Raises:
        DicomReadError: For anything that makes the file unusable (not DICOM, not ultrasound,
            damaged header or pixel data, bad regions); the message names the file.
        MissingCodecError: When the transfer syntax needs a decoder that is not installed.
    """
    path = Path(path)
    dataset = read_dataset(path)
    try:
        return _read_image(path, dataset, frames, region, crop)
    except DicomReadError:
        raise
    except Exception as error:  # values parsed lazily can fail anywhere (wrong VR, bad length)
        raise _fail(path, f"damaged DICOM data ({safe_reason(error)})") from None


def _read_image(
    path: Path, dataset: Dataset, frames: FramePolicy, region: RegionPolicy, crop: bool
) -> UltrasoundImage:
    _check_image_header(path, dataset)
    rows, columns, _, _ = _image_size(path, dataset)
    try:
        count = frame_count(dataset)
        regions = ultrasound_regions(dataset)
    except (ValueError, TypeError) as error:
        raise _fail(path, str(error)) from None
    _check_frames_fit(path, dataset, count)
    for number, item in enumerate(regions, start=1):
        if item.bounds[2] >= columns or item.bounds[3] >= rows:
            raise _fail(path, f"ultrasound region {number} lies outside the {columns}x{rows} image")
    try:
        chosen = choose_region(regions, region)
        keep = select_frames(count, frames)
    except (ValueError, TypeError) as error:
        raise _fail(path, str(error)) from None
    if chosen is not None and chosen.spacing_mm is not None:
        spacing, source = chosen.spacing_mm, "regions"
    elif (from_header := pixel_spacing_mm(dataset)) is not None:
        spacing, source = from_header, "pixel_spacing"
    else:
        spacing, source = None, None
    if spacing is not None and not spacing_is_physical(spacing):
        low, high = SPACING_RANGE_MM
        raise _fail(path, f"pixel spacing ({source}) outside the physical range {low}-{high} mm")
    bounds = chosen.bounds if (crop and chosen is not None) else (0, 0, columns - 1, rows - 1)

    decoder = _decoder_for(path, dataset)
    photometric = str(dataset.PhotometricInterpretation).strip()
    kept: list[UltrasoundFrame] = []
    for index in keep:
        try:
            pixels, meta = decoder.as_array(dataset, index=index, as_rgb=False)
            decoded_as = str(meta.get("photometric_interpretation", photometric))
            gray = to_grayscale(pixels, decoded_as, dataset)
        except MissingCodecError:
            raise
        except Exception as error:  # truncated data, codec errors, inconsistent headers
            syntax = UID(dataset.file_meta.TransferSyntaxUID)
            raise _fail(
                path,
                f"pixel data of frame {index + 1} cannot be decoded ({syntax.name}): "
                f"{safe_reason(error)}",
            ) from None
        if gray.shape != (rows, columns):
            raise _fail(path, f"decoded frame has shape {gray.shape}, header says {rows}x{columns}")
        min_x, min_y, max_x, max_y = bounds
        kept.append(UltrasoundFrame(index + 1, gray[min_y : max_y + 1, min_x : max_x + 1].copy()))
    return UltrasoundImage(
        path=path,
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(dataset.get("SOPInstanceUID", "")),
        transfer_syntax=str(dataset.file_meta.TransferSyntaxUID),
        photometric=photometric,
        frames=kept,
        number_of_frames=count,
        spacing_mm=spacing,
        spacing_source=source,
        region=chosen,
        crop=bounds,
        regions=regions,
        dataset=dataset,
    )
