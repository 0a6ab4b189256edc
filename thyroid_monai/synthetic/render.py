"""Rendering of one B-mode-like transverse view of a thyroid lobe with a nodule.

The image is built the way an ultrasound image forms, in three layers:

1. **Echogenicity map** ``E`` (mean backscatter amplitude, 1.0 = thyroid parenchyma): skin,
   subcutaneous fat, the strap-muscle band (darker than thyroid, with fibrillar striations), the
   lobe with its bright capsule, the carotid artery and/or the trachea at a side, deep muscle, and
   the nodule. The nodule's composition, echogenicity, shape and margin come from its ACR
   descriptors; echogenicity levels are relative to parenchyma and the muscle band, so "very
   hypoechoic" is darker than the muscle band in every image.
2. **Acoustic transmission**: along each image column (the beam direction) the intensity below a
   calcification is multiplied by a falling transmission (posterior shadow) and below fluid by a
   rising one (posterior enhancement). This is a cumulative product along depth, vectorised.
3. **Speckle and display**: fully developed speckle is the magnitude of spatially correlated
   complex Gaussian noise (Rayleigh distributed, elongated laterally as a real beam is); then depth
   attenuation after time-gain compensation, global gain, electronic noise, and log compression to
   8 bits. Echogenic foci are specular and are added after speckle.

Arrays here are ``(rows, columns)`` = ``(depth, lateral)``; the dataset writer transposes to MONAI's
x-first convention. All geometry is in millimetres, so anisotropic pixel spacing is handled
exactly (a taller-than-wide nodule is taller in millimetres, whatever the pixel shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image
from scipy import ndimage

from thyroid_monai.tirads import AcrDescriptors, Composition, EchogenicFocus, Echogenicity
from thyroid_monai.tirads import Margin as M
from thyroid_monai.tirads import Shape as S

# Mean backscatter amplitude relative to parenchyma (1.0). The muscle band sits between hypo and
# very hypo by construction: 0.20 against 0.35-0.55 (hypo) and 0.07-0.11 (very hypo).
PARENCHYMA = 1.0
MUSCLE = 0.20
ECHO_LEVELS: dict[Echogenicity, tuple[float, float]] = {
    Echogenicity.HYPER_ISO: (0.9, 1.4),
    Echogenicity.HYPO: (0.35, 0.55),
    Echogenicity.VERY_HYPO: (0.07, 0.11),
    Echogenicity.ANECHOIC: (0.008, 0.015),
}
FLUID = 0.01
_ANGLE_SAMPLES = 2048
_ANGLE_GRID = np.linspace(-np.pi, np.pi, _ANGLE_SAMPLES, endpoint=False)


@dataclass(frozen=True)
class RenderSettings:
    """Acquisition and anatomy ranges of the phantom; each image samples within them.

    Attributes:
        height: Rows of the tissue image (depth direction).
        width: Columns of the tissue image (lateral direction).
        field_of_view_mm: Range of the lateral field of view (probe footprint) in millimetres; the
            pixel spacing follows from it and ``width``, so smaller images keep real anatomy.
        anisotropy: Axial spacing is the lateral spacing times a factor in ``1 ± anisotropy``.
        nodule_diameter_mm: Range of the nodule's largest diameter.
        taller_than_wide_max_mm: Largest diameter of a taller-than-wide nodule (it must fit the
            lobe's depth).
        dynamic_range_db: Display dynamic range.
        gain_db: Global gain offset.
        attenuation_db_per_mm: Net two-way attenuation left after time-gain compensation.
        speckle_mm: Speckle correlation length (lateral, axial) in millimetres.
        p_carotid: Chance that the carotid artery is in the field of view.
        p_trachea: Chance that the trachea is in the field of view.
    """

    height: int = 256
    width: int = 256
    field_of_view_mm: tuple[float, float] = (34.0, 45.0)
    anisotropy: float = 0.1
    nodule_diameter_mm: tuple[float, float] = (6.0, 22.0)
    taller_than_wide_max_mm: float = 16.0
    dynamic_range_db: tuple[float, float] = (46.0, 54.0)
    gain_db: tuple[float, float] = (-4.0, 4.0)
    attenuation_db_per_mm: tuple[float, float] = (0.05, 0.25)
    speckle_mm: tuple[float, float] = (0.22, 0.10)
    p_carotid: float = 0.85
    p_trachea: float = 0.6


@dataclass(frozen=True)
class NoduleGeometry:
    """Analytic outline of a nodule: a perturbed ellipse in millimetres.

    A point at offset ``(dx, dy)`` mm from the centre has normalised radius
    ``rho = hypot(dx / a, dy / b)`` and angle ``theta = atan2(dy / b, dx / a)``; it is inside the
    nodule when ``rho < 1 + sum_k amp_k cos(k theta + phase_k)``.
    """

    center_mm: tuple[float, float]
    """(x, y) of the centre."""
    semi_axes_mm: tuple[float, float]
    """(a, b): lateral and axial semi-axes of the unperturbed ellipse."""
    harmonics: np.ndarray
    """Orders k (int) of the outline perturbation."""
    amplitudes: np.ndarray
    phases: np.ndarray
    edge_width: float
    """Width of the echo transition at the margin, in normalised radius (large = ill-defined)."""

    def radius(self, theta: np.ndarray) -> np.ndarray:
        """Normalised boundary radius at the angles ``theta`` (radians).

        For many angles (a pixel grid) the series is tabulated once per outline on a fine periodic
        grid and interpolated, two orders of magnitude cheaper than evaluating every harmonic at
        every pixel, with an error far below a pixel; a few angles (polygon vertices) are
        evaluated exactly.
        """
        theta = np.asarray(theta)
        if theta.size < _ANGLE_SAMPLES:
            return self._series(theta.ravel()).reshape(theta.shape).astype(np.float32)
        return np.interp(theta, _ANGLE_GRID, self._table, period=2 * np.pi).astype(np.float32)

    def _series(self, theta: np.ndarray) -> np.ndarray:
        terms = self.amplitudes[:, None] * np.cos(
            self.harmonics[:, None] * theta[None, :] + self.phases[:, None]
        )
        return 1.0 + terms.sum(axis=0)

    @cached_property
    def _table(self) -> np.ndarray:
        return self._series(_ANGLE_GRID)

    def smoothed(self, keep_fraction: float) -> NoduleGeometry:
        """The outline with harmonics of order 4 and above scaled by ``keep_fraction``."""
        scale = np.where(self.harmonics >= 4, keep_fraction, 1.0)
        return NoduleGeometry(
            self.center_mm,
            self.semi_axes_mm,
            self.harmonics,
            self.amplitudes * scale,
            self.phases,
            self.edge_width,
        )


@dataclass
class RenderedImage:
    """One rendered tissue image with everything known about it.

    Attributes:
        image: ``uint8`` B-mode image, ``(rows, columns)``.
        mask: True nodule mask, ``bool``, same shape.
        spacing_mm: ``(x, y)`` pixel spacing in millimetres.
        geometry: The nodule's analytic outline.
        regions: Named ``bool`` masks of anatomy (``muscle``, ``lobe``) used by checks and tests.
        foci_centers: ``{focus type: [(row, col), ...]}`` of rendered echogenic foci.
        shadow_columns: Columns under a calcification that cast a shadow.
    """

    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float]
    geometry: NoduleGeometry
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    foci_centers: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    shadow_columns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Zero-mean, unit-variance-ish random field with correlation length ``cell_px`` pixels.

    Noise on a coarse grid is upsampled bicubically (PIL, in C), which is far cheaper than a wide
    Gaussian filter at full resolution.
    """
    rows, cols = shape
    coarse = (max(2, int(np.ceil(rows / cell_px)) + 1), max(2, int(np.ceil(cols / cell_px)) + 1))
    noise = rng.standard_normal(coarse, dtype=np.float32)
    image = Image.fromarray(noise, mode="F").resize((cols, rows), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def _speckle(
    rng: np.random.Generator, shape: tuple[int, int], sigma_px: tuple[float, float]
) -> np.ndarray:
    """Rayleigh speckle with unit mean: magnitude of correlated complex Gaussian noise."""
    parts = rng.standard_normal((2, *shape), dtype=np.float32)
    parts = ndimage.gaussian_filter(parts, (0.0, *sigma_px), truncate=3.0)
    magnitude = np.hypot(parts[0], parts[1])
    return magnitude / magnitude.mean()


def _sample_geometry(
    rng: np.random.Generator,
    descriptors: AcrDescriptors,
    settings: RenderSettings,
    center_mm: tuple[float, float],
) -> NoduleGeometry:
    lo, hi = settings.nodule_diameter_mm
    if descriptors.shape is S.TALLER_THAN_WIDE:
        hi = min(hi, settings.taller_than_wide_max_mm)
        ratio = rng.uniform(1.15, 1.5)  # AP / transverse
    else:
        ratio = rng.uniform(0.55, 0.88)
    diameter = rng.uniform(lo, hi)
    a = diameter / 2 / max(1.0, ratio)
    b = a * ratio
    orders = np.arange(2, 25)
    # Smooth outlines keep gentle low-order wobble; lobulated ones get lobules (k=4..8) and
    # irregular high-order detail; extrathyroidal extension is the most irregular.
    low = rng.uniform(0.0, 0.035, size=orders.size) * (orders <= 3)
    if descriptors.margin in (M.LOBULATED_IRREGULAR, M.EXTRATHYROIDAL_EXTENSION):
        # A few lobules (two or three orders between 3 and 7) and some irregular fine detail.
        chosen = rng.choice(np.arange(3, 8), size=int(rng.integers(2, 4)), replace=False)
        lobes = np.isin(orders, chosen) * rng.uniform(0.05, 0.11, size=orders.size)
        detail = rng.uniform(0.0, 0.018, size=orders.size) * (orders > 8)
        if descriptors.margin is M.EXTRATHYROIDAL_EXTENSION:
            lobes *= 1.25
            detail *= 1.5
    else:
        lobes = rng.uniform(0.0, 0.01, size=orders.size) * ((orders >= 4) & (orders <= 8))
        detail = np.zeros(orders.size)
    amplitudes = low + lobes + detail
    phases = rng.uniform(0, 2 * np.pi, size=orders.size)
    edge_width = rng.uniform(0.09, 0.16) if descriptors.margin is M.ILL_DEFINED else 0.012
    return NoduleGeometry(center_mm, (a, b), orders, amplitudes, phases, edge_width)


def _rasterise(
    geometry: NoduleGeometry, x_mm: np.ndarray, y_mm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised radius ``rho``, boundary radius ``R(theta)`` and angle on a grid of mm coords."""
    a, b = geometry.semi_axes_mm
    u = (x_mm - geometry.center_mm[0]) / a
    v = (y_mm - geometry.center_mm[1]) / b
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    return rho, geometry.radius(theta), theta


def _bbox(
    geometry: NoduleGeometry,
    spacing: tuple[float, float],
    shape: tuple[int, int],
    pad: float = 1.6,
) -> tuple[slice, slice]:
    """Row and column slices that contain the nodule with a margin (``pad`` times the axes)."""
    (cx, cy), (a, b) = geometry.center_mm, geometry.semi_axes_mm
    extent = pad * (1 + geometry.amplitudes.sum())
    c0 = max(0, int((cx - a * extent) / spacing[0]))
    c1 = min(shape[1], int(np.ceil((cx + a * extent) / spacing[0])) + 1)
    r0 = max(0, int((cy - b * extent) / spacing[1]))
    r1 = min(shape[0], int(np.ceil((cy + b * extent) / spacing[1])) + 1)
    return slice(r0, r1), slice(c0, c1)


def outline_fits(
    mask: np.ndarray, descriptors: AcrDescriptors, spacing: tuple[float, float]
) -> bool:
    """Whether a mask's extent in millimetres agrees with the descriptor's shape (with margin)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size < 3 or cols.size < 3:
        return False
    ap = (rows[-1] - rows[0] + 1) * spacing[1]
    transverse = (cols[-1] - cols[0] + 1) * spacing[0]
    if descriptors.shape is S.TALLER_THAN_WIDE:
        return bool(ap > 1.05 * transverse)
    return bool(ap < 0.95 * transverse)


class _Canvas:
    """Coordinate grids of one image in millimetres and the maps being painted."""

    def __init__(self, settings: RenderSettings, spacing: tuple[float, float]):
        self.shape = (settings.height, settings.width)
        self.spacing = spacing
        self.y = ((np.arange(settings.height, dtype=np.float32) + 0.5) * spacing[1])[:, None]
        self.x = ((np.arange(settings.width, dtype=np.float32) + 0.5) * spacing[0])[None, :]
        self.width_mm = settings.width * spacing[0]
        self.depth_mm = settings.height * spacing[1]
        self.echo = np.full(self.shape, 0.35, dtype=np.float32)
        self.log_transmission = np.zeros(self.shape, dtype=np.float32)
        self.specular = np.zeros(self.shape, dtype=np.float32)


def _paint_layers(
    rng: np.random.Generator, canvas: _Canvas
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paints skin, subcutaneous fat and the strap muscles with their fascia.

    Returns:
        The muscle band, its lower border (depth per column, mm) and the tissue texture.
    """
    x, y, echo = canvas.x, canvas.y, canvas.echo
    w = canvas.width_mm
    tilt = rng.uniform(-0.04, 0.04)
    skin = rng.uniform(0.8, 1.4)
    muscle_top = skin + rng.uniform(1.0, 2.5) + tilt * (x - w / 2)
    muscle_bottom = muscle_top + rng.uniform(3.0, 4.5)
    texture = smooth_field(rng, canvas.shape, 12.0)

    np.copyto(echo, 0.42 * (1 + 0.3 * texture))
    fat = y < muscle_top
    np.copyto(
        echo, 0.5 * (1 + 0.6 * np.clip(smooth_field(rng, canvas.shape, 5.0), 0, None)), where=fat
    )
    np.copyto(echo, 1.2, where=y < skin)
    muscle = (y >= muscle_top) & (y < muscle_bottom)
    period = rng.uniform(0.6, 0.9)
    striation = np.sin(2 * np.pi * (y - muscle_top) / period + 0.4 * np.sin(x / 3.0))
    np.copyto(echo, MUSCLE * (1 + 0.45 * striation), where=muscle)
    # Fascia: thin bright lines around the muscle band.
    np.copyto(echo, 0.9, where=(np.abs(y - muscle_top) < 0.2) | (np.abs(y - muscle_bottom) < 0.2))
    return muscle, muscle_bottom, texture


@dataclass(frozen=True)
class _Lobe:
    """The painted thyroid lobe: its superellipse (mm) and masks."""

    cx: float
    cy: float
    a: float
    b: float
    power: float
    mask: np.ndarray
    capsule: np.ndarray


def _paint_lobe(
    rng: np.random.Generator,
    canvas: _Canvas,
    muscle_bottom: np.ndarray,
    texture: np.ndarray,
    min_lobe_mm: tuple[float, float],
    medial_sign: int,
) -> _Lobe:
    """Paints the lobe with its capsule under the muscles, and the deep muscle under the lobe.

    The lobe is an egg-shaped superellipse, thicker medially, large enough for the nodule
    (``min_lobe_mm`` are the smallest semi-axes).
    """
    x, y, echo = canvas.x, canvas.y, canvas.echo
    w = canvas.width_mm
    lobe_a = max(rng.uniform(0.32, 0.4) * w, min_lobe_mm[0])
    lobe_b = max(rng.uniform(8.5, 10.5), min_lobe_mm[1])
    lobe_cx = w / 2 + rng.uniform(-0.06, 0.06) * w
    lobe_cy = float(muscle_bottom.mean()) + lobe_b + 0.2
    power = rng.uniform(2.0, 2.6)
    taper = 1 + 0.18 * medial_sign * np.clip((x - lobe_cx) / lobe_a, -1, 1)
    lobe_r = (
        np.abs((x - lobe_cx) / lobe_a) ** power + np.abs((y - lobe_cy) / (lobe_b * taper)) ** power
    ) ** (1 / power)
    lobe = lobe_r < 1.0
    np.copyto(echo, PARENCHYMA * (1 + 0.1 * texture), where=lobe)
    # The capsule is a thin echogenic line whose brightness varies along its length.
    capsule = (np.abs(lobe_r - 1.0) < 0.22 / lobe_b) & (
        smooth_field(rng, canvas.shape, 20.0) > -0.6
    )

    # Deep muscle (longus colli) under the lobe.
    deep = (y > lobe_cy + lobe_b + 1.5) & ~lobe
    np.copyto(echo, 0.3 * (1 + 0.35 * np.sin(2 * np.pi * y / 1.1)), where=deep)
    return _Lobe(lobe_cx, lobe_cy, lobe_a, lobe_b, power, lobe, capsule)


def _paint_carotid(
    rng: np.random.Generator, canvas: _Canvas, lobe: _Lobe, medial_sign: int
) -> np.ndarray:
    """Paints the carotid lateral and posterior to the lobe, indenting its posterolateral corner.

    Returns:
        The lumen.
    """
    x, y, echo = canvas.x, canvas.y, canvas.echo
    w = canvas.width_mm
    radius = rng.uniform(2.8, 3.8)
    cx = lobe.cx - medial_sign * (0.8 * lobe.a + radius * rng.uniform(0.4, 0.8))
    cx = float(np.clip(cx, radius + 0.5, w - radius - 0.5))
    cy = lobe.cy + rng.uniform(0.45, 0.7) * lobe.b
    d = np.hypot(x - cx, y - cy)
    lumen, wall = d < radius, np.abs(d - radius) < 0.35
    echo[wall] = 1.4
    echo[lumen] = FLUID
    canvas.log_transmission[lumen] += 0.055 * canvas.spacing[1]  # posterior enhancement
    return lumen


def _paint_trachea(
    rng: np.random.Generator, canvas: _Canvas, lobe: _Lobe, medial_sign: int
) -> np.ndarray:
    """Paints the trachea medial to the lobe: cartilage, the bright air interface, reverberations.

    Returns:
        The air under the anterior wall.
    """
    x, y, echo = canvas.x, canvas.y, canvas.echo
    radius = rng.uniform(8.0, 10.0)
    cx = lobe.cx + medial_sign * (lobe.a + radius * rng.uniform(0.55, 0.8))
    cy = lobe.cy + rng.uniform(0.0, 0.4) * lobe.b
    inside_columns = np.abs(x - cx) < radius
    wall_depth = cy - np.sqrt(np.clip(radius**2 - (x - cx) ** 2, 0, None))
    below_wall = y - wall_depth
    air = inside_columns & (below_wall > 0.35)
    interface = inside_columns & (np.abs(below_wall) <= 0.35)
    cartilage = inside_columns & (below_wall < -0.35) & (below_wall > -1.8)
    echo[cartilage] = 0.3
    echo[interface] = 2.4
    # Air sends nothing back: under the anterior wall there are only reverberations of the
    # interface (arcs parallel to it, fading) and then shadow to the bottom of the image.
    spacing = rng.uniform(1.8, 2.6)
    reverb = sum(0.9 * 0.45**n * (np.abs(below_wall - n * spacing) < 0.3) for n in range(1, 4))
    np.copyto(echo, 0.02 + reverb, where=air)
    return air


def _paint_anatomy(
    rng: np.random.Generator,
    canvas: _Canvas,
    settings: RenderSettings,
    min_lobe_mm: tuple[float, float],
    medial_left: bool,
) -> dict:
    """Paints skin, fat, strap muscles, lobe with capsule, vessels/trachea and deep muscle.

    ``min_lobe_mm`` are the smallest lobe semi-axes that hold the nodule with a rim of tissue;
    ``medial_left`` puts the midline (trachea) on the image's left.
    """
    medial_sign = -1 if medial_left else 1
    muscle, muscle_bottom, texture = _paint_layers(rng, canvas)
    lobe = _paint_lobe(rng, canvas, muscle_bottom, texture, min_lobe_mm, medial_sign)
    regions = {"muscle": muscle, "lobe": lobe.mask}
    structures = []
    has_carotid = rng.random() < settings.p_carotid
    has_trachea = rng.random() < settings.p_trachea
    if not (has_carotid or has_trachea):
        has_carotid = True  # one of them always marks a side
    if has_carotid:
        regions["carotid"] = _paint_carotid(rng, canvas, lobe, medial_sign)
        structures.append("carotid")
    if has_trachea:
        regions["trachea"] = _paint_trachea(rng, canvas, lobe, medial_sign)
        structures.append("trachea")
    regions["_capsule"] = lobe.capsule
    regions["_lobe_geometry"] = np.array([lobe.cx, lobe.cy, lobe.a, lobe.b, lobe.power])
    regions["_structures"] = np.array(structures)
    return regions


def _fit_nodule_center(
    rng: np.random.Generator,
    descriptors: AcrDescriptors,
    lobe: np.ndarray,
    a: float,
    b: float,
) -> tuple[float, float]:
    """Centre inside the lobe; an extrathyroidal nodule straddles the anterior capsule."""
    lobe_cx, lobe_cy, lobe_a, lobe_b, _ = (float(v) for v in lobe)
    dx_room = max(0.0, lobe_a - a - 1.5)
    cx = lobe_cx + rng.uniform(-0.7, 0.7) * dx_room
    if descriptors.margin is M.EXTRATHYROIDAL_EXTENSION:
        cy = lobe_cy - lobe_b + b * rng.uniform(0.35, 0.6)
    else:
        dy_room = max(0.0, lobe_b - b - 1.0)
        cy = lobe_cy + rng.uniform(-0.5, 0.6) * dy_room
    return cx, cy


@dataclass(frozen=True)
class _Footprint:
    """The nodule rasterised on its bounding box: the box slices and polar maps in it."""

    rows: slice
    cols: slice
    rho: np.ndarray
    boundary: np.ndarray
    theta: np.ndarray


def _footprint(geometry: NoduleGeometry, canvas: _Canvas) -> _Footprint:
    rows, cols = _bbox(geometry, canvas.spacing, canvas.shape)
    rho, boundary, theta = _rasterise(geometry, canvas.x[:, cols], canvas.y[rows, :])
    return _Footprint(rows, cols, rho, boundary, theta)


def _paint_nodule(
    rng: np.random.Generator,
    canvas: _Canvas,
    descriptors: AcrDescriptors,
    geometry: NoduleGeometry,
    footprint: _Footprint,
    regions: dict,
    rendered: RenderedImage,
) -> np.ndarray:
    rows, cols = footprint.rows, footprint.cols
    rho, boundary = footprint.rho, footprint.boundary
    inside = rho < boundary
    mask = np.zeros(canvas.shape, dtype=bool)
    mask[rows, cols] = inside
    box_shape = inside.shape
    sy = canvas.spacing[1]

    lo, hi = ECHO_LEVELS[descriptors.echogenicity]
    solid_level = rng.uniform(lo, hi)
    cell = 1.0 / canvas.spacing[0]  # pixels per mm
    fluid = np.zeros(box_shape, dtype=bool)
    if descriptors.composition is Composition.CYSTIC:
        nodule_echo = np.full(box_shape, FLUID, dtype=np.float32)
        fluid = rho < boundary - 0.06
    elif descriptors.composition is Composition.SPONGIFORM:
        # Honeycomb of sub-millimetre cysts separated by thin echogenic septa.
        microcysts = smooth_field(rng, box_shape, 0.55 * cell)
        fluid = (microcysts > np.quantile(microcysts, 0.42)) & (rho < boundary - 0.08)
        nodule_echo = np.where(fluid, FLUID * 2, rng.uniform(1.0, 1.3)).astype(np.float32)
    elif descriptors.composition is Composition.MIXED:
        field_ = smooth_field(rng, box_shape, 2.5 * cell) + 0.8 * (rho / np.maximum(boundary, 1e-3))
        interior = inside & (rho < boundary - 0.1)
        share = rng.uniform(0.3, 0.6)
        threshold = np.quantile(field_[interior], 1 - share) if interior.any() else np.inf
        fluid = interior & (field_ > threshold)
        texture = 1 + 0.12 * smooth_field(rng, box_shape, 1.0 * cell)
        nodule_echo = np.where(fluid, FLUID, solid_level * texture).astype(np.float32)
    else:
        texture = 1 + 0.12 * smooth_field(rng, box_shape, 1.0 * cell)
        nodule_echo = (solid_level * texture).astype(np.float32)

    # Soft blend at the margin: sharp for smooth/lobulated margins, wide for ill-defined ones.
    weight = 1.0 / (1.0 + np.exp(np.clip((rho - boundary) / geometry.edge_width, -30, 30)))
    box = canvas.echo[rows, cols]
    box[:] = box * (1 - weight) + nodule_echo * weight
    if descriptors.composition is Composition.CYSTIC:
        wall = inside & (rho > boundary - 0.05)
        box[wall] = 1.1
    canvas.log_transmission[rows, cols] += np.where(fluid, 0.055 * sy, 0.0).astype(np.float32)

    # Capsule drawn after the nodule, interrupted where an extrathyroidal nodule breaks through.
    capsule = regions["_capsule"] & ~mask
    for structure in ("carotid", "trachea"):  # the capsule never runs through a lumen
        if structure in regions:
            capsule &= ~regions[structure]
    if descriptors.margin is M.EXTRATHYROIDAL_EXTENSION:
        breach = ndimage.binary_dilation(mask, iterations=3)
        capsule &= ~breach
    canvas.echo[capsule] = 1.5

    _paint_foci(rng, canvas, descriptors, geometry, footprint, rendered)
    return mask


def _gaussian_spot(
    canvas: _Canvas, row: float, col: float, sigma_mm: float, amplitude: float
) -> None:
    """Adds a small Gaussian bright spot (a specular reflector) to the specular map."""
    sx, sy = canvas.spacing
    radius = int(np.ceil(3 * sigma_mm / min(sx, sy)))
    r0, r1 = max(0, int(row) - radius), min(canvas.shape[0], int(row) + radius + 1)
    c0, c1 = max(0, int(col) - radius), min(canvas.shape[1], int(col) + radius + 1)
    rr = (np.arange(r0, r1)[:, None] + 0.5 - row) * sy
    cc = (np.arange(c0, c1)[None, :] + 0.5 - col) * sx
    canvas.specular[r0:r1, c0:c1] += amplitude * np.exp(-(rr**2 + cc**2) / (2 * sigma_mm**2))


def _paint_foci(
    rng: np.random.Generator,
    canvas: _Canvas,
    descriptors: AcrDescriptors,
    geometry: NoduleGeometry,
    footprint: _Footprint,
    rendered: RenderedImage,
) -> None:
    """Paints echogenic foci as specular reflectors; calcifications also block the beam."""
    rows, cols = footprint.rows, footprint.cols
    rho, boundary, theta = footprint.rho, footprint.boundary, footprint.theta
    foci = descriptors.foci
    sx, sy = canvas.spacing
    calcified = np.zeros(rho.shape, dtype=bool)
    rendered.foci_centers = {}
    if EchogenicFocus.PUNCTATE in foci:
        candidates = np.argwhere(rho < 0.8 * boundary)
        count = min(len(candidates), int(rng.integers(3, 11)))
        picks = candidates[rng.choice(len(candidates), size=count, replace=False)]
        centres = []
        for r, c in picks:
            row, col = r + rows.start + 0.5, c + cols.start + 0.5
            _gaussian_spot(canvas, row, col, rng.uniform(0.12, 0.18), rng.uniform(4.0, 6.0))
            centres.append((int(r + rows.start), int(c + cols.start)))
        rendered.foci_centers["punctate"] = centres
    if EchogenicFocus.MACROCALCIFICATION in foci:
        centres = []
        candidates = np.argwhere(rho < 0.6 * boundary)
        for _ in range(int(rng.integers(1, 3))):
            r, c = candidates[rng.integers(len(candidates))]
            half_w, half_h = rng.uniform(0.8, 2.0), rng.uniform(0.5, 1.0)  # mm
            ys = (np.arange(rho.shape[0])[:, None] - r) * sy
            xs = (np.arange(rho.shape[1])[None, :] - c) * sx
            blob = (xs / half_w) ** 2 + (ys / half_h) ** 2 < 1
            calcified |= blob
            centres.append((int(r + rows.start), int(c + cols.start)))
        rendered.foci_centers["macrocalcification"] = centres
    if EchogenicFocus.PERIPHERAL_RIM in foci:
        start = rng.uniform(-np.pi, np.pi)
        span = rng.uniform(0.4, 0.85) * 2 * np.pi
        angle = np.mod(theta - start, 2 * np.pi)
        thickness = 0.7 / min(geometry.semi_axes_mm)
        rim = (np.abs(rho - boundary) < thickness / 2) & (angle < span)
        calcified |= rim
        rendered.foci_centers["peripheral_rim"] = [
            (int(r + rows.start), int(c + cols.start)) for r, c in np.argwhere(rim)[::25]
        ]
    if calcified.any():
        canvas.specular[rows, cols] += np.where(calcified, rng.uniform(3.5, 5.0), 0.0)
        # Strong attenuation inside the calcification: each millimetre passes ~10% of the beam.
        canvas.log_transmission[rows, cols] += np.where(calcified, np.log(0.1) * sy, 0.0)
        rendered.shadow_columns = np.flatnonzero(calcified.any(axis=0)) + cols.start


def _place_nodule(
    rng: np.random.Generator,
    descriptors: AcrDescriptors,
    settings: RenderSettings,
    spacing_mm: tuple[float, float],
    medial_left: bool,
    given: NoduleGeometry | None,
) -> tuple[_Canvas, dict, NoduleGeometry, _Footprint]:
    """Paints the anatomy and places the nodule in the lobe, again until its outline fits.

    An outline fits when it has the descriptors' shape and margin on this grid, stays inside the
    image and clear of the carotid and trachea.

    Returns:
        The painted canvas, its regions, the nodule's geometry and footprint.
    """
    for _attempt in range(30):
        shape_only = given or _sample_geometry(rng, descriptors, settings, (0.0, 0.0))
        a, b = shape_only.semi_axes_mm
        reach = 1 + float(shape_only.amplitudes.sum())
        canvas = _Canvas(settings, spacing_mm)
        regions = _paint_anatomy(
            rng, canvas, settings, (a * reach + 2.0, b * reach + 1.2), medial_left
        )
        center = _fit_nodule_center(rng, descriptors, regions["_lobe_geometry"], a, b)
        candidate = NoduleGeometry(
            center, (a, b), shape_only.harmonics, shape_only.amplitudes, shape_only.phases,
            shape_only.edge_width,
        )  # fmt: skip
        footprint = _footprint(candidate, canvas)
        trial = np.zeros(canvas.shape, dtype=bool)
        trial[footprint.rows, footprint.cols] = footprint.rho < footprint.boundary
        touches_edge = trial[[0, -1], :].any() or trial[:, [0, -1]].any()
        overlaps = any(
            (trial & regions[name]).any() for name in ("carotid", "trachea") if name in regions
        )
        if outline_fits(trial, descriptors, spacing_mm) and not touches_edge and not overlaps:
            return canvas, regions, candidate, footprint
    # The size and ratio ranges make this practically impossible.
    raise RuntimeError(f"could not fit a nodule outline for {descriptors}")  # pragma: no cover


def _acquire(
    rng: np.random.Generator,
    canvas: _Canvas,
    settings: RenderSettings,
    spacing_mm: tuple[float, float],
) -> np.ndarray:
    """The acquisition physics, from the painted echogenicity to a uint8 image.

    Speckle, shadows and enhancement along the beam, attenuation, electronic noise and log
    compression.
    """
    sigma_px = (
        settings.speckle_mm[1] / spacing_mm[1],
        settings.speckle_mm[0] / spacing_mm[0],
    )
    intensity = np.maximum(canvas.echo, 1e-3)  # texture fields must not make backscatter negative
    intensity *= _speckle(rng, canvas.shape, sigma_px)
    intensity += canvas.specular
    # Transmission along the beam, only in the columns where something attenuates or enhances:
    # a cumulative sum along depth, shifted one row so that a reflector does not shadow itself;
    # shadows are floored at -26 dB as real ones are.
    columns = np.flatnonzero(canvas.log_transmission.any(axis=0))
    if columns.size:
        path = np.cumsum(canvas.log_transmission[:, columns], axis=0)
        path[1:] = path[:-1].copy()
        path[0] = 0.0
        intensity[:, columns] *= np.exp(np.clip(path, np.log(0.05), np.log(2.2)))
    attenuation_db = rng.uniform(*settings.attenuation_db_per_mm) * canvas.y
    lateral = 1 - 0.08 * ((canvas.x - canvas.width_mm / 2) / (canvas.width_mm / 2)) ** 2
    intensity *= (10 ** (-attenuation_db / 20) * lateral).astype(np.float32)
    noise = rng.standard_normal((2, *canvas.shape), dtype=np.float32)
    intensity += 0.004 * np.hypot(noise[0], noise[1])  # electronic noise floor

    dynamic_range = rng.uniform(*settings.dynamic_range_db)
    gain = rng.uniform(*settings.gain_db)
    # Log compression; parenchyma (0 dB before gain) sits at about 80% of the grey scale.
    scale = np.float32(20 * 255.0 / dynamic_range)
    offset = np.float32((gain + 0.8 * dynamic_range) * 255.0 / dynamic_range)
    image = np.log10(intensity + np.float32(1e-4))
    image *= scale
    image += offset
    np.clip(image, 0, 255, out=image)
    return np.rint(image).astype(np.uint8)


def render_image(
    rng: np.random.Generator,
    descriptors: AcrDescriptors,
    settings: RenderSettings | None = None,
    *,
    geometry: NoduleGeometry | None = None,
    spacing_mm: tuple[float, float] | None = None,
    side: str = "RT",
) -> RenderedImage:
    """Renders one transverse view of a lobe containing a nodule with the given descriptors.

    Args:
        rng: Random generator; the same generator state gives the same image.
        descriptors: ACR descriptors of the nodule (their level is the image's true level).
        settings: Ranges of acquisition and anatomy; defaults to :class:`RenderSettings`.
        geometry: Reuse a nodule outline (another view of the same nodule); its centre is
            re-placed inside the new lobe.
        spacing_mm: Force the ``(x, y)`` pixel spacing instead of sampling it.
        side: Lobe imaged, ``"RT"`` or ``"LT"``. Images follow the radiological convention (the
            patient's right on the image's left), so the trachea of a right lobe is on the right.

    Returns:
        The image, its true mask, spacing and the rendering facts used by tests and readers.
    """
    settings = settings or RenderSettings()
    if spacing_mm is None:
        sx = rng.uniform(*settings.field_of_view_mm) / settings.width
        sy = sx * rng.uniform(1 - settings.anisotropy, 1 + settings.anisotropy)
        spacing_mm = (float(sx), float(sy))
    if side not in ("RT", "LT"):
        raise ValueError(f"side must be 'RT' or 'LT', got {side!r}")
    canvas, regions, geometry, footprint = _place_nodule(
        rng, descriptors, settings, spacing_mm, side == "LT", geometry
    )
    rendered = RenderedImage(
        image=np.empty(0), mask=np.empty(0), spacing_mm=spacing_mm, geometry=geometry
    )
    mask = _paint_nodule(rng, canvas, descriptors, geometry, footprint, regions, rendered)
    rendered.image = _acquire(rng, canvas, settings, spacing_mm)
    rendered.mask = mask
    rendered.regions = {
        k: v for k, v in regions.items() if not k.startswith("_") and v.dtype == bool
    }
    rendered.regions["structures"] = regions["_structures"]
    return rendered
