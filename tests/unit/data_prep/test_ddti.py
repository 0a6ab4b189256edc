"""The DDTI converter on the real sample (skipped with a reason when the sample is absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from defusedxml import ElementTree
from matplotlib.path import Path as PolygonPath

from thyroid_monai.cli import main
from thyroid_monai.io.nifti import read_nifti_2d

REPOSITORY = Path(__file__).resolve().parents[3]
DEFAULT_SAMPLE = REPOSITORY.parent / "shared" / "data" / "ddti_sample"
SAMPLE = Path(os.environ.get("THYROID_MONAI_DDTI_SAMPLE", DEFAULT_SAMPLE))
pytestmark = pytest.mark.skipif(
    not (SAMPLE / "xml").is_dir(),
    reason=f"DDTI sample not found at {SAMPLE} (set THYROID_MONAI_DDTI_SAMPLE)",
)


def _independent_mask(svg: str, shape) -> np.ndarray:
    """Point-in-polygon on pixel centres (matplotlib); a region cut by truncation is dropped."""
    if not svg.rstrip().endswith("]"):
        svg = svg[: svg.rfind("{", 0, svg.rfind('"points"'))].rstrip(", ") + "]"
    regions = json.loads(svg)
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    centres = np.column_stack([xx.ravel(), yy.ravel()])
    mask = np.zeros(rows * cols, bool)
    for region in regions:
        polygon = [(p["x"], p["y"]) for p in region["points"]]
        # The converter fills the outline too, as annotation tools draw it: accept centres within
        # half a pixel of the polygon (the sign of matplotlib's radius follows the orientation).
        path = PolygonPath(polygon)
        mask |= path.contains_points(centres, radius=0.5) | path.contains_points(
            centres, radius=-0.5
        )
    return mask.reshape(shape)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddti")
    assert main(["prep", "ddti", "--in", str(SAMPLE), "--out", str(out), "--folds", "3",
                 "--no-progress"]) == 0  # fmt: skip
    datalist = json.loads((out / "datalist.json").read_text())
    items = {i["case_id"]: i for i in datalist["training"] + datalist["testing"]}
    return out, datalist, items


def test_masks_match_the_polygons(converted):
    out, _, items = converted
    for xml_path in sorted((SAMPLE / "xml").glob("*.xml")):
        case = ElementTree.parse(xml_path).getroot()
        for mark in case.findall("mark"):
            svg = mark.findtext("svg") or ""
            case_id = f"ddti_{case.findtext('number')}_{mark.findtext('image')}"
            if not svg.strip():
                continue
            mask, spacing = read_nifti_2d(out / items[case_id]["label"])
            assert spacing is None  # DDTI has no spacing: never 1 mm
            expected = _independent_mask(svg, mask.shape)
            iou = np.logical_and(mask, expected).sum() / np.logical_or(mask, expected).sum()
            assert iou >= 0.99, (case_id, iou)


def test_quirks_truncation_regions_empty_labels(converted):
    out, datalist, items = converted
    assert datalist["tirads_scheme"] == "kwak"
    assert items["ddti_54_1"]["contour_truncated"]
    assert items["ddti_127_1"]["contour_truncated"]
    for case_id in ("ddti_54_1", "ddti_127_1"):
        assert read_nifti_2d(out / items[case_id]["label"])[0].any()
    assert items["ddti_62_1"]["tirads"] is None  # kept for segmentation only
    assert "label" in items["ddti_62_1"]
    assert "ddti_62_3" not in items  # neither contour nor level
    assert "62_3.jpg,no contour" in (out / "rejected.csv").read_text()
    assert items["ddti_54_1"]["tirads"] == "4c"
    assert items["ddti_3_1"]["tirads"] == "4a"
    assert items["ddti_54_1"]["ddti_descriptors"]["composition"] == "dense"
    patients = {}
    for item in datalist["training"]:
        patients.setdefault(item["patient"], set()).add(item["fold"])
    assert all(len(folds) == 1 for folds in patients.values())
