"""TN3K, Stanford cine-clip and folder converters on small fabricated copies of their layouts."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from thyroid_monai.cli import main
from thyroid_monai.io.nifti import read_nifti_2d


def _blob(seed: int, shape=(48, 64)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 200, shape, dtype=np.uint8)
    mask = np.zeros(shape, np.uint8)
    top, left = 5 + seed % 10, 8 + seed % 20
    mask[top : top + 15, left : left + 20] = 255
    return image, mask


def _items(out):
    datalist = json.loads((out / "datalist.json").read_text())
    return datalist, {i["case_id"]: i for i in datalist["training"] + datalist["testing"]}


@pytest.fixture
def tn3k(tmp_path):
    root = tmp_path / "tn3k"
    for split, count in (("trainval", 10), ("test", 3)):
        (root / f"{split}-image").mkdir(parents=True)
        (root / f"{split}-mask").mkdir()
        for number in range(count):
            image, mask = _blob(number + (100 if split == "test" else 0))
            Image.fromarray(np.stack([image] * 3, -1)).save(
                root / f"{split}-image/{number:04d}.jpg"
            )
            Image.fromarray(mask).save(root / f"{split}-mask/{number:04d}.jpg", quality=90)
        rows = ["id,label"] + [f"{n:04d}.jpg,{n % 2}" for n in range(count)]
        (root / f"label4{split}.csv").write_text("\n".join(rows) + "\n")
    # Byte-identical duplicate of image 0 under another number, as public sets have.
    (root / "trainval-image/0009.jpg").write_bytes((root / "trainval-image/0000.jpg").read_bytes())
    for fold in range(5):
        val = [fold * 2, fold * 2 + 1]
        train = [i for i in range(10) if i not in val]
        (root / f"tn3k-trainval-fold{fold}.json").write_text(
            json.dumps({"train": train, "val": val})
        )
    return root


def test_tn3k_official_test_split_pathology_and_duplicates(tn3k, tmp_path):
    out = tmp_path / "out"
    assert main(["prep", "tn3k", "--in", str(tn3k), "--out", str(out), "--folds", "3",
                 "--no-progress"]) == 0  # fmt: skip
    datalist, items = _items(out)
    assert sorted(i["case_id"] for i in datalist["testing"]) == [
        "tn3k_test_0000", "tn3k_test_0001", "tn3k_test_0002"]  # fmt: skip
    assert items["tn3k_trainval_0001"]["pathology"] == "malignant"
    assert items["tn3k_trainval_0002"]["pathology"] == "benign"
    assert items["tn3k_trainval_0000"]["fold"] == items["tn3k_trainval_0009"]["fold"]
    mask, spacing = read_nifti_2d(out / items["tn3k_trainval_0003"]["label"])
    assert spacing is None
    assert set(np.unique(mask)) == {0, 1}
    assert abs(int(mask.sum()) - 15 * 20) <= 6  # JPEG mask thresholded at half its maximum
    # The dataset's own folds put the duplicate pair (0 and 9) in different folds: refused.
    assert main(["prep", "tn3k", "--in", str(tn3k), "--out", str(tmp_path / "kept"),
                 "--folds-from", "dataset", "--no-progress"]) == 2  # fmt: skip


def test_stanford_clips_read_lazily_by_frame_policy(tmp_path):
    root = tmp_path / "stanford"
    root.mkdir()
    frames = {"101_": 5, "102_": 4, "103_": 2}
    images, masks, ids, numbers = [], [], [], []
    for clip, count in frames.items():
        for number in range(count):
            image, mask = _blob(int(clip[:3]) * 10 + number)
            images.append(image)
            masks.append(mask)
            ids.append(clip.encode())
            numbers.append(number)
    order = np.random.default_rng(0).permutation(len(ids))  # rows are not in clip order
    with h5py.File(root / "dataset.hdf5", "w") as handle:
        handle["image"] = np.stack(images)[order]
        handle["mask"] = np.stack(masks)[order]
        handle["annot_id"] = np.array(ids, dtype="S")[order]
        handle["frame_num"] = np.array(numbers)[order]
    (root / "metadata.csv").write_text(
        "annot_id,age,sex,ti-rads_composition,ti-rads_echogenicity,ti-rads_shape,ti-rads_margin,"
        "ti-rads_echogenicfoci,ti-rads_level,histopath_diagnosis\n"
        "101_,50,F,solid,hypoechoic,wider,smooth,none,4,Benign nodule\n"
        "102_,61,M,mixed,isoechoic,wider,smooth,none,3,Papillary carcinoma (malignant)\n"
    )
    out = tmp_path / "out"
    assert main(["prep", "stanford-cine", "--in", str(root), "--out", str(out), "--folds", "2",
                 "--test-fraction", "0", "--no-progress"]) == 0  # fmt: skip
    _, items = _items(out)
    assert sorted(items) == ["stanford_101_f0002", "stanford_102_f0001"]  # middle frames
    first = items["stanford_101_f0002"]
    assert first["tirads"] == "TR4"
    assert first["pathology"] == "benign"
    assert first["patient"] == "101"
    assert first["frame"] == 2
    assert first["stanford_descriptors"]["ti-rads_composition"] == "solid"
    image, _ = read_nifti_2d(out / first["image"])
    np.testing.assert_array_equal(image, _blob(1012)[0])
    assert "103_" in (out / "rejected.csv").read_text()  # no metadata row
    out_all = tmp_path / "all"
    assert main(["prep", "stanford-cine", "--in", str(root), "--out", str(out_all), "--frames",
                 "all", "--frame-stride", "2", "--folds", "2", "--test-fraction", "0",
                 "--no-progress"]) == 0  # fmt: skip
    assert sorted(_items(out_all)[1]) == [
        "stanford_101_f0000", "stanford_101_f0002", "stanford_101_f0004",
        "stanford_102_f0000", "stanford_102_f0002"]  # fmt: skip


def test_folder_with_labels_spacing_and_bad_rows(tmp_path):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for number in range(6):
        image, mask = _blob(number)
        Image.fromarray(image).save(root / f"images/n{number}.png")
        Image.fromarray(mask // 255).save(root / f"masks/n{number}.png")
    (root / "images/readme.txt").write_text("not an image")
    (root / "labels.csv").write_text(
        "image,patient,tirads,spacing_x_mm,spacing_y_mm\n"
        + "".join(f"n{n}.png,p{n // 2},TR{1 + n % 5},0.1,0.2\n" for n in range(5))
        + "n5.png,p2,TR9,,\n"
    )
    out = tmp_path / "out"
    # The TR9 row is a failure (exit 1) while every other image is converted; readme.txt is
    # only skipped.
    assert main(["prep", "folder", "--in", str(root), "--out", str(out), "--labels",
                 str(root / "labels.csv"), "--folds", "2", "--test-fraction", "0",
                 "--no-progress"]) == 1  # fmt: skip
    _, items = _items(out)
    assert sorted(items) == [f"n{n}" for n in range(5)]
    assert items["n1"]["patient"] == "p0"
    assert items["n1"]["fold"] == items["n0"]["fold"]
    assert items["n3"]["tirads"] == "TR4"
    image, spacing = read_nifti_2d(out / items["n3"]["image"])
    assert spacing == pytest.approx((0.1, 0.2))
    np.testing.assert_array_equal(image, _blob(3)[0])
    mask, _ = read_nifti_2d(out / items["n3"]["label"])
    np.testing.assert_array_equal(mask, _blob(3)[1] // 255)
    rejected = (out / "rejected.csv").read_text()
    assert "readme.txt" in rejected
    assert "TR9" in rejected
    stages = {row.split(",")[0]: row.rsplit(",", 1)[1] for row in rejected.splitlines()[1:]}
    assert stages == {"images/readme.txt": "skipped", "images/n5.png": "convert"}
