"""The phantom dataset on disk: NIfTI with spacing, a datalist with the keys, identical bytes."""

import hashlib
import json

import numpy as np
import pytest

from data_prep.phantom import write_phantom_dataset
from thyroid_monai import keys
from thyroid_monai.cli import main
from thyroid_monai.data import datalist_split, load_datalist
from thyroid_monai.io.nifti import read_nifti_2d
from thyroid_monai.synthetic import Phantom, PhantomConfig, RenderSettings

SMALL = RenderSettings(height=96, width=96)


def digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    config = PhantomConfig(seed=11, render=SMALL)
    write_phantom_dataset(tmp_path / "a", 10, config, folds=2, progress=False)
    write_phantom_dataset(tmp_path / "b", 10, config, folds=2, workers=2, progress=False)
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a == b
    assert len(a) == 1 + 10 * (3 + 3)  # datalist + image, consensus, truth, 3 readers each
    write_phantom_dataset(
        tmp_path / "c", 10, PhantomConfig(seed=12, render=SMALL), folds=2, progress=False
    )
    assert digests(tmp_path / "c") != a


def test_datalist_items_carry_every_key_and_match_the_files(tmp_path):
    config = PhantomConfig(seed=13, render=SMALL, readers=2)
    path = write_phantom_dataset(tmp_path, 12, config, folds=3, test_fraction=0.25, progress=False)
    datalist = load_datalist(path)
    assert datalist[keys.TIRADS_SCHEME] == "acr"
    assert datalist["numTraining"] + datalist["numTest"] == 12
    assert datalist["testing"]
    expected = Phantom(config)
    cases = {case.case_id: case for case in expected.cases(12)}
    for item in datalist["training"] + datalist["testing"]:
        for key in (keys.IMAGE, keys.LABEL, keys.LABEL_TRUE, keys.LABEL_READERS, keys.TIRADS,
                    keys.TIRADS_TRUE, keys.TIRADS_READERS, keys.DESCRIPTORS, keys.SPACING,
                    keys.PATIENT, keys.CASE_ID, keys.SOURCE, keys.NODULE_SIZE):  # fmt: skip
            assert key in item, key
        case = cases[item[keys.CASE_ID]]
        image, spacing = read_nifti_2d(tmp_path / item[keys.IMAGE])
        assert np.array_equal(image, case.image)
        assert spacing == pytest.approx(case.spacing_mm)
        assert item[keys.SPACING] == pytest.approx(list(case.spacing_mm))
        truth, _ = read_nifti_2d(tmp_path / item[keys.LABEL_TRUE])
        assert np.array_equal(truth.astype(bool), case.mask)
        assert len(item[keys.LABEL_READERS]) == len(item[keys.TIRADS_READERS]) == 2
        assert item[keys.TIRADS_TRUE] == case.level
        assert item[keys.TIRADS] == case.majority
    folds = {item[keys.FOLD] for item in datalist["training"]}
    assert folds <= {0, 1, 2}
    train = datalist_split(path, "train", 0)
    validate = datalist_split(path, "validate", 0)
    assert {i[keys.PATIENT] for i in train}.isdisjoint({i[keys.PATIENT] for i in validate})
    assert all(str(tmp_path) in item[keys.IMAGE] for item in train)


def test_synth_cli_writes_dataset_and_preview(tmp_path, capsys):
    preview = tmp_path / "grid.png"
    code = main(["synth", "--out", str(tmp_path / "ds"), "--n", "6", "--readers", "2",
                 "--variability", "strong", "--size", "96", "96", "--folds", "2",
                 "--preview", str(preview), "--preview-count", "4", "--no-progress"])  # fmt: skip
    assert code == 0
    assert preview.stat().st_size > 1000
    datalist = json.loads((tmp_path / "ds" / "datalist.json").read_text())
    assert datalist["phantom"]["variability"] == "strong"
    assert "datalist:" in capsys.readouterr().out


def test_synth_cli_needs_an_output(capsys):
    assert main(["synth", "--n", "2"]) == 2
    assert "--out" in capsys.readouterr().err
