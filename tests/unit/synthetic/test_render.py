"""The phantom's pixels match its descriptors."""

import numpy as np
import pytest
from scipy import ndimage

from thyroid_monai.synthetic.render import RenderSettings, render_image
from thyroid_monai.tirads import AcrDescriptors

SAMPLES = 12


def descriptors(**changes):
    values = {
        "composition": "solid",
        "echogenicity": "hypo",
        "shape": "wider_than_tall",
        "margin": "smooth",
        "foci": [],
    }
    values.update(changes)
    return AcrDescriptors.from_dict(values)


def renders(desc, count=SAMPLES, seed=100):
    return [render_image(np.random.default_rng(seed + i), desc) for i in range(count)]


def interior_mean(rendered, erosion=3):
    return rendered.image[ndimage.binary_erosion(rendered.mask, iterations=erosion)].mean()


def extent_ratio_mm(rendered):
    rows = np.flatnonzero(rendered.mask.any(axis=1))
    cols = np.flatnonzero(rendered.mask.any(axis=0))
    ap = (rows[-1] - rows[0] + 1) * rendered.spacing_mm[1]
    transverse = (cols[-1] - cols[0] + 1) * rendered.spacing_mm[0]
    return ap / transverse


def test_image_and_mask_shapes_and_spacing():
    settings = RenderSettings(height=192, width=160)
    rendered = render_image(np.random.default_rng(0), descriptors(), settings)
    assert rendered.image.shape == rendered.mask.shape == (192, 160)
    assert rendered.image.dtype == np.uint8
    assert rendered.mask.any()
    sx, sy = rendered.spacing_mm
    assert settings.field_of_view_mm[0] <= sx * 160 <= settings.field_of_view_mm[1]
    assert abs(sy / sx - 1) <= settings.anisotropy + 1e-9


def test_taller_than_wide_is_taller_in_millimetres():
    # Anisotropic pixels on purpose: the check must hold in mm, not in pixels.
    settings = RenderSettings(anisotropy=0.25)
    for rendered in renders(descriptors(shape="taller_than_wide")):
        assert extent_ratio_mm(rendered) > 1.0
    for rendered in renders(descriptors(shape="wider_than_tall")):
        assert extent_ratio_mm(rendered) < 1.0
    forced = render_image(
        np.random.default_rng(5), descriptors(shape="taller_than_wide"), settings,
        spacing_mm=(0.2, 0.12),
    )  # fmt: skip
    assert extent_ratio_mm(forced) > 1.0


def test_cystic_interiors_are_darker_than_solid_ones():
    cystic = [
        interior_mean(r)
        for r in renders(descriptors(composition="cystic", echogenicity="anechoic"))
    ]
    solid = [interior_mean(r) for r in renders(descriptors(echogenicity="very_hypo"), seed=300)]
    # Even the darkest solid nodule (very hypoechoic) is brighter than the brightest cyst.
    assert max(cystic) < min(solid)


def test_very_hypoechoic_is_darker_than_the_muscle_band_and_hypoechoic_is_not():
    for rendered in renders(descriptors(echogenicity="very_hypo")):
        assert interior_mean(rendered) < rendered.image[rendered.regions["muscle"]].mean()
    for rendered in renders(descriptors(echogenicity="hypo"), seed=200):
        muscle = rendered.image[rendered.regions["muscle"]].mean()
        parenchyma = rendered.image[
            rendered.regions["lobe"] & ~ndimage.binary_dilation(rendered.mask, iterations=5)
        ].mean()
        assert muscle < interior_mean(rendered) < parenchyma


def test_punctate_foci_are_small_bright_spots_inside_the_mask():
    small = []
    for rendered in renders(descriptors(foci=["punctate"])):
        centres = np.array(rendered.foci_centers["punctate"])
        assert len(centres) >= 3
        assert rendered.mask[centres[:, 0], centres[:, 1]].all()
        spots = np.zeros_like(rendered.mask)
        spots[centres[:, 0], centres[:, 1]] = True
        background = ndimage.binary_erosion(rendered.mask, iterations=2)
        background &= ~ndimage.binary_dilation(spots, iterations=3)
        threshold = np.percentile(rendered.image[background], 99)
        assert rendered.image[centres[:, 0], centres[:, 1]].min() > threshold + 10
        labels, _ = ndimage.label(rendered.image > threshold + 10)
        pixel_area = rendered.spacing_mm[0] * rendered.spacing_mm[1]
        small += [(labels == labels[r, c]).sum() * pixel_area <= 1.0 for r, c in centres]
    assert np.mean(small) > 0.9  # sub-millimetre-scale spots (two may touch)


def test_macrocalcification_casts_a_posterior_shadow():
    for rendered in renders(descriptors(foci=["macrocalcification"], echogenicity="hyper_iso")):
        columns = rendered.shadow_columns
        assert columns.size
        rows = np.flatnonzero(rendered.mask.any(axis=1))
        below = slice(rows[-1] + 3, rows[-1] + 33)
        dark_elsewhere = np.zeros(rendered.image.shape[1], dtype=bool)
        for structure in ("trachea", "carotid"):
            if structure in rendered.regions:
                dark_elsewhere |= rendered.regions[structure].any(axis=0)
        neighbours = np.zeros_like(dark_elsewhere)
        neighbours[max(0, columns.min() - 30) : columns.max() + 31] = True
        neighbours[columns.min() : columns.max() + 1] = False
        reference = rendered.image[below][:, neighbours & ~dark_elsewhere].mean()
        assert rendered.image[below][:, columns].mean() < reference - 30


def test_extrathyroidal_extension_breaks_out_of_the_lobe():
    for rendered in renders(descriptors(margin="extrathyroidal_extension"), count=6):
        outside_lobe = rendered.mask & ~rendered.regions["lobe"]
        assert outside_lobe.sum() > 0.02 * rendered.mask.sum()


def test_same_generator_state_gives_the_same_image():
    first = render_image(np.random.default_rng(7), descriptors(foci=["punctate"]))
    second = render_image(np.random.default_rng(7), descriptors(foci=["punctate"]))
    assert np.array_equal(first.image, second.image)
    assert np.array_equal(first.mask, second.mask)


def test_side_puts_the_trachea_medially():
    settings = RenderSettings(p_trachea=1.0, p_carotid=0.0)
    for side, medial_left in (("RT", False), ("LT", True)):
        rendered = render_image(np.random.default_rng(3), descriptors(), settings, side=side)
        columns = np.flatnonzero(rendered.regions["trachea"].any(axis=0))
        centre = rendered.image.shape[1] / 2
        assert (columns.mean() < centre) == medial_left
    with pytest.raises(ValueError, match="side"):
        render_image(np.random.default_rng(3), descriptors(), side="MID")
