import nibabel as nib
import numpy as np
import pytest

from thyroid_monai.io.files import atomic_path, write_json_atomic
from thyroid_monai.io.nifti import read_nifti_2d, write_nifti_2d


def test_round_trip_keeps_orientation_and_spacing(tmp_path):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)  # 3 rows (y), 4 columns (x)
    path = write_nifti_2d(tmp_path / "a.nii.gz", image, (0.2, 0.15))
    data, spacing = read_nifti_2d(path)
    assert np.array_equal(data, image)
    assert spacing == pytest.approx((0.2, 0.15))
    stored = nib.load(str(path))
    assert stored.shape == (4, 3)  # x first, as MONAI loads it
    assert stored.header.get_xyzt_units()[0] == "mm"


def test_unknown_spacing_is_never_read_as_millimetres(tmp_path):
    path = write_nifti_2d(tmp_path / "a.nii.gz", np.zeros((2, 2), np.uint8), None)
    assert read_nifti_2d(path)[1] is None


def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"b\.nii\.gz.*2D"):
        write_nifti_2d(tmp_path / "b.nii.gz", np.zeros((2, 2, 2)), (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        write_nifti_2d(tmp_path / "c.nii.gz", np.zeros((2, 2)), (0.0, 1.0))


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})

    def interrupted_write():
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert target.read_text() == '{\n "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
