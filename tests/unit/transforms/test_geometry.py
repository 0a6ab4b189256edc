import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from thyroid_monai.transforms import ResizeToFit, ResizeToFitd, fit_geometry, undo_fit


def ellipse(size_x, size_y, centre, radius_x, radius_y):
    x = np.arange(size_x)[:, None]
    y = np.arange(size_y)[None, :]
    return (((x - centre[0]) / radius_x) ** 2 + ((y - centre[1]) / radius_y) ** 2 <= 1).astype(
        np.float32
    )


def extents(mask):
    xs, ys = np.nonzero(mask)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_a_non_square_frame_keeps_the_nodule_shape():
    # a 560 x 360 (x lateral, y depth) frame with a nodule wider than tall: 0.7 AP / transverse
    mask = ellipse(560, 360, (280, 180), 100, 70)
    out = ResizeToFit((128, 128), mode="nearest")(MetaTensor(torch.from_numpy(mask)[None]))
    assert out.shape == (1, 128, 128)
    width, depth = extents(out.as_tensor()[0].numpy() > 0.5)
    assert depth / width == pytest.approx(0.7, abs=0.05)  # a square resize would give 1.09
    assert float(out.pixdim[0]) == pytest.approx(float(out.pixdim[1]), rel=0.02)  # square pixels


def test_padding_is_centred_and_undone_exactly():
    geometry = fit_geometry((560, 360), (128, 128))
    assert geometry.scaled == (128, 82)
    assert geometry.offset == (0, 23)
    maps = torch.zeros(1, 1, 128, 128)
    maps[..., :, 23 : 23 + 82] = 1.0
    back = undo_fit(maps, (560, 360))
    assert back.shape == (1, 1, 560, 360)
    assert torch.allclose(back, torch.ones_like(back))


def test_dictionary_version_resizes_every_key_with_its_mode():
    image = MetaTensor(torch.rand(1, 60, 40))
    label = MetaTensor(torch.from_numpy(ellipse(60, 40, (30, 20), 10, 8))[None])
    out = ResizeToFitd(["image", "label"], (32, 32), mode=["area", "nearest"])(
        {"image": image, "label": label}
    )
    assert out["image"].shape == out["label"].shape == (1, 32, 32)
    assert set(np.unique(out["label"].numpy())) <= {0.0, 1.0}


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="positive"):
        fit_geometry((0, 10), (32, 32))
