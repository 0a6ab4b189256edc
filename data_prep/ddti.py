"""Converter ``ddti``: the DDTI thyroid ultrasound database (XML + JPG layout).

Layout: ``xml/<case>.xml`` (or XML files directly under ``--in``) and ``images/<case>_<n>.jpg``.
Each ``<case>`` holds ``number, age, sex, composition, echogenicity, margins, calcifications,
tirads`` and one ``<mark>`` per image: ``<image>n</image><svg>JSON</svg>`` where the JSON is a list
of regions ``{"points": [{"x", "y"}, ...]}`` in image pixels.

Quirks handled (see ``shared/data/ddti_sample/README.md``):

- the ``<svg>`` text of some cases is cut off (at 2500 characters): every complete region is
  recovered; the cut one is dropped by default, since closing a cut contour with a straight line
  gives a wrong mask (``keep_partial`` keeps it), and the item records ``contour_truncated``;
- several regions in one image (dual-panel frames) are all rasterised into the one mask;
- an empty ``<tirads>`` keeps the images for segmentation only (``tirads`` is ``null``); an
  image with neither contour nor level is rejected;
- labels are Kwak-style (2, 3, 4a, 4b, 4c, 5) and stay in that scheme (``tirads_scheme: kwak``);
  the free-text descriptors are kept, normalised, under ``ddti_descriptors``;
- the spacing is unknown (``null``), and the burned-in scanner text is not removed (the files
  carry no region information); the header says so.

XML is parsed with defusedxml, and unknown tags are ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from data_prep.convert import SKIPPED, ConversionError, Rejection, Sample, SourceCase
from thyroid_monai import keys
from thyroid_monai.tirads import UnknownLabelError, normalise_level

DDTI_DESCRIPTORS = "ddti_descriptors"
"""Item key of DDTI's own descriptor text (composition, echogenicity, margins, calcifications)."""

_POINT = re.compile(r'\{\s*"x"\s*:\s*(-?\d+(?:\.\d+)?)\s*,\s*"y"\s*:\s*(-?\d+(?:\.\d+)?)\s*\}')


def parse_regions(
    text: str,
) -> tuple[list[list[tuple[float, float]]], list[tuple[float, float]] | None]:
    """Regions of an ``<svg>`` JSON text, tolerating truncation.

    Returns:
        ``(complete, partial)``: the polygons that parsed completely, and the points of a region
        cut off by truncation (``None`` when the text is complete).

    Raises:
        ValueError: If the text is not a list of regions at all.
    """
    text = text.strip()
    if not text:
        return [], None
    try:
        regions = json.loads(text)
        return [_points(region) for region in regions], None
    except json.JSONDecodeError:
        pass
    if not text.startswith("["):
        raise ValueError(f"contour text does not start a JSON list: {text[:40]!r}")
    decoder = json.JSONDecoder()
    complete: list[list[tuple[float, float]]] = []
    position = 1
    while True:
        while position < len(text) and text[position] in " ,\n\r\t":
            position += 1
        try:
            region, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            partial = [(float(x), float(y)) for x, y in _POINT.findall(text[position:])]
            return complete, partial
        complete.append(_points(region))


def _points(region: Any) -> list[tuple[float, float]]:
    if not isinstance(region, dict) or not isinstance(region.get("points"), list):
        raise ValueError("a contour region needs a 'points' list")
    return [(float(p["x"]), float(p["y"])) for p in region["points"]]


def rasterise(polygons: list[list[tuple[float, float]]], shape: tuple[int, int]) -> np.ndarray:
    """Union of filled polygons (outline included) as a ``uint8`` mask of ``shape``."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) >= 3:
            draw.polygon(polygon, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


def _text(element: Any, tag: str) -> str:
    found = element.find(tag)
    return " ".join((found.text or "").split()).lower() if found is not None else ""


@dataclass
class DdtiCase(SourceCase):
    """One DDTI case: its XML and its images."""

    key: str
    root: Path
    files: tuple[Path, ...]
    xml_path: Path
    images_dir: Path
    keep_partial: bool
    skipped: list[Rejection] = field(default_factory=list)

    def convert(self) -> list[Sample]:
        """Every marked image of the case with its mask and label."""
        from defusedxml import ElementTree
        from defusedxml.common import DefusedXmlException

        try:
            case = ElementTree.parse(self.xml_path).getroot()
        except (ElementTree.ParseError, DefusedXmlException) as error:
            raise ConversionError(f"{self.xml_path}: unreadable XML ({error})") from None
        number = _text(case, "number") or self.xml_path.stem
        raw_level = _text(case, "tirads")
        try:
            level = normalise_level(raw_level, "kwak") if raw_level else None
        except UnknownLabelError as error:
            raise ConversionError(f"{self.xml_path}: {error}") from None
        descriptors = {
            t: _text(case, t) for t in ("composition", "echogenicity", "margins", "calcifications")
        }
        samples = []
        for mark in case.findall("mark"):
            image_number = _text(mark, "image")
            image_path = self.images_dir / f"{number}_{image_number}.jpg"
            if not image_path.is_file():
                raise ConversionError(f"{self.xml_path}: image {image_path.name} is missing")
            try:
                image = np.asarray(Image.open(image_path).convert("L"))
            except OSError as error:
                raise ConversionError(f"{image_path}: unreadable image ({error})") from None
            try:
                complete, partial = parse_regions(mark.findtext("svg") or "")
            except (ValueError, KeyError, TypeError) as error:
                raise ConversionError(f"{self.xml_path}: image {image_number}: {error}") from None
            polygons = complete + ([partial] if (partial and self.keep_partial) else [])
            mask = rasterise(polygons, image.shape) if polygons else None
            if mask is None and level is None:
                self.skipped.append(
                    Rejection(
                        _relative_to(image_path, self.root),
                        "no contour and no TI-RADS level",
                        SKIPPED,
                    )
                )
                continue
            samples.append(
                Sample(
                    case_id=f"ddti_{number}_{image_number}",
                    patient=f"ddti-{number}",
                    image=image,
                    spacing_mm=None,
                    mask=mask,
                    fields={
                        keys.TIRADS: level,
                        DDTI_DESCRIPTORS: descriptors,
                        "contour_truncated": partial is not None,
                        keys.SOURCE: "ddti",
                    },
                )
            )
        return samples


def _relative_to(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def discover_ddti(
    in_dir: str | Path, *, keep_partial: bool = False
) -> tuple[list[DdtiCase], list[Rejection]]:
    """Finds the DDTI cases under ``in_dir`` (``xml/`` and ``images/`` folders, or flat).

    Raises:
        FileNotFoundError: If there is no XML file.
    """
    root = Path(in_dir)
    xml_dir = root / "xml" if (root / "xml").is_dir() else root
    images_dir = root / "images" if (root / "images").is_dir() else root
    xml_files = sorted(xml_dir.glob("*.xml"), key=lambda p: (len(p.stem), p.stem))
    if not xml_files:
        raise FileNotFoundError(f"no DDTI XML files in {xml_dir}")
    cases = []
    for xml_path in xml_files:
        images = tuple(sorted(images_dir.glob(f"{xml_path.stem}_*.jpg")))
        cases.append(
            DdtiCase(
                key=xml_path.relative_to(root).as_posix(),
                root=root,
                files=(xml_path, *images),
                xml_path=xml_path,
                images_dir=images_dir,
                keep_partial=keep_partial,
            )
        )
    referenced = {img for case in cases for img in case.files[1:]}
    strays = [
        Rejection(p.relative_to(root).as_posix(), "image without a case XML", SKIPPED)
        for p in sorted(images_dir.glob("*.jpg"))
        if p not in referenced
    ]
    return cases, strays
