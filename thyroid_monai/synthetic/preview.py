"""A labelled grid of phantom frames with the true and reader contours drawn on them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from thyroid_monai.synthetic.phantom import PhantomCase

TRUTH_COLOUR = (40, 230, 60)
READER_COLOURS = ((255, 210, 0), (0, 200, 255), (255, 60, 200), (255, 130, 30), (160, 120, 255))
_ABBREVIATIONS = {
    "wider_than_tall": "WTT",
    "taller_than_wide": "TTW",
    "extrathyroidal_extension": "ETE",
    "lobulated_irregular": "lobulated",
    "peripheral_rim": "rim",
    "macrocalcification": "macro",
    "hyper_iso": "iso/hyper",
    "very_hypo": "very hypo",
    "ill_defined": "ill-defined",
}


def contour(mask: np.ndarray) -> np.ndarray:
    """One-pixel outline of a binary mask (the mask minus its erosion)."""
    return mask & ~ndimage.binary_erosion(mask)


def _caption(case: PhantomCase) -> list[str]:
    d = case.descriptors.to_dict()
    foci = "+".join(_ABBREVIATIONS.get(f, f) for f in d["foci"]) or "no foci"
    words = [_ABBREVIATIONS.get(str(d[k]), str(d[k])) for k in ("composition", "echogenicity")]
    words += [_ABBREVIATIONS.get(str(d[k]), str(d[k])) for k in ("shape", "margin")]
    readers = " ".join(a.level for a in case.annotations)
    return [
        f"{case.case_id}  true {case.level} ({case.points.total} pts)",
        f"readers {readers} -> {case.majority}",
        ", ".join(words[:2]),
        f"{', '.join(words[2:])}, {foci}",
    ]


def render_tile(case: PhantomCase, *, caption_height: int = 52) -> Image.Image:
    """One frame with contours (truth green, readers in colours) and a caption below."""
    frame = case.frame
    x0, y0, _, _ = frame.region
    rgb = np.repeat(frame.image[:, :, None], 3, axis=2)
    rows, cols = case.mask.shape
    tissue = rgb[y0 : y0 + rows, x0 : x0 + cols]
    for index, annotation in enumerate(case.annotations):
        tissue[contour(annotation.mask)] = READER_COLOURS[index % len(READER_COLOURS)]
    tissue[contour(case.mask)] = TRUTH_COLOUR
    tile = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + caption_height), (0, 0, 0))
    tile.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    for line, text in enumerate(_caption(case)):
        draw.text((4, rgb.shape[0] + 2 + 12 * line), text, fill=(235, 235, 235), font=font)
    return tile


def save_preview_grid(cases: Sequence[PhantomCase], path: str | Path, *, columns: int = 4) -> Path:
    """Writes a PNG grid of tiles, one per case.

    Args:
        cases: Cases to show, left to right, top to bottom.
        path: Output PNG path (parent folders are created).
        columns: Tiles per row.

    Returns:
        The path written.
    """
    if not cases:
        raise ValueError("no cases to preview")
    tiles = [render_tile(case) for case in cases]
    width = max(t.width for t in tiles)
    height = max(t.height for t in tiles)
    columns = min(columns, len(tiles))
    grid_rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * width, grid_rows * height), (20, 20, 20))
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % columns) * width, (index // columns) * height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
