"""Reading inference inputs: PNG, JPEG, NIfTI, discovery, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thyroid_monai.inference import InputError, discover_inputs, read_input
from thyroid_monai.io.nifti import write_nifti_2d


def test_png_and_jpeg_are_gray_with_unknown_spacing(tmp_path: Path) -> None:
    rgb = np.zeros((12, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.jpg")
    png = read_input(tmp_path / "a.png")
    assert png.kind == "png"
    assert png.image.shape == (12, 20)
    assert png.spacing_mm is None
    assert int(png.image[0, 0]) == round(0.299 * 200)
    assert read_input(tmp_path / "b.jpg").kind == "jpeg"


def test_nifti_keeps_its_spacing(tmp_path: Path) -> None:
    image = np.arange(30, dtype=np.uint8).reshape(5, 6)
    write_nifti_2d(tmp_path / "c.nii.gz", image, (0.3, 0.4))
    read = read_input(tmp_path / "c.nii.gz")
    assert read.spacing_mm == pytest.approx((0.3, 0.4))
    assert read.spacing_source == "nifti"
    np.testing.assert_array_equal(read.image, image)


def test_bad_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"broken\.png"):
        read_input(tmp_path / "broken.png")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8bgarbage")
    with pytest.raises(InputError, match=r"broken\.nii\.gz"):
        read_input(tmp_path / "broken.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type"):
        read_input(tmp_path / "notes.txt")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(InputError, match=r"deep\.png: unsupported PNG mode"):
        read_input(tmp_path / "deep.png")


def test_discovery_is_recursive_and_skips_outputs_and_hidden_files(tmp_path: Path) -> None:
    for relative in ("a.png", "sub/b.nii.gz", "sub/.hidden.png", "out/c.png", "notes.txt"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = discover_inputs(tmp_path, exclude=[tmp_path / "out"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "sub/b.nii.gz"]
    assert discover_inputs(tmp_path / "a.png") == [tmp_path / "a.png"]
    with pytest.raises(FileNotFoundError, match="missing"):
        discover_inputs(tmp_path / "missing")
