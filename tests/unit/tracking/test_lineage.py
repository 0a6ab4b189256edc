"""A datalist split's fingerprint: the same data gives the same digest, any change another."""

import json
import shutil

import pytest

from data_prep.phantom import write_phantom_dataset
from thyroid_monai.synthetic import PhantomConfig, RenderSettings
from thyroid_monai.tracking import datalist_lineage, dataset_input


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    config = PhantomConfig(seed=3, render=RenderSettings(height=32, width=32))
    write_phantom_dataset(folder, 10, config, folds=2, test_fraction=0.2, progress=False)
    return folder


def test_the_same_data_elsewhere_has_the_same_digest_and_a_changed_file_another(data, tmp_path):
    train = datalist_lineage(data / "datalist.json", "train", fold=0)
    assert train.name == "thyroid-phantom_train_fold0"
    assert (train.source, train.split, train.context) == ("phantom", "train", "training")
    assert train.items > 0
    assert train.files >= 2 * train.items  # images and labels (and the readers' labels)
    assert datalist_lineage(data / "datalist.json", "validate", fold=0).digest != train.digest
    assert datalist_lineage(data / "datalist.json", "train", fold=1).digest != train.digest

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert datalist_lineage(copy / "datalist.json", "train", fold=0).digest == train.digest

    item = next(i for i in json.loads((copy / "datalist.json").read_text())["training"]
                if i["fold"] != 0)  # fmt: skip
    label = copy / item["label"]
    label.write_bytes(label.read_bytes() + b"\0")  # one label file changed
    assert datalist_lineage(copy / "datalist.json", "train", fold=0).digest != train.digest
    # a file the test split does not name leaves its digest alone
    assert (datalist_lineage(copy / "datalist.json", "test").digest
            == datalist_lineage(data / "datalist.json", "test").digest)  # fmt: skip


def test_a_missing_file_is_named(data):
    item = json.loads((data / "datalist.json").read_text())["testing"][0]
    (data / item["image"]).unlink()
    with pytest.raises(FileNotFoundError, match=item["image"].split("/")[-1]):
        datalist_lineage(data / "datalist.json", "test")


def test_the_dataset_input_carries_split_source_and_context(data):
    lineage = datalist_lineage(data / "datalist.json", "test")
    entry = dataset_input(lineage)
    tags = {tag.key: tag.value for tag in entry.tags}
    assert tags["mlflow.data.context"] == "testing"
    assert (tags["split"], tags["source"]) == ("test", "phantom")
    assert tags["datalist_sha256"] == lineage.datalist_sha256
    assert entry.dataset.digest == lineage.digest
    assert json.loads(entry.dataset.source)["uri"] == str((data / "datalist.json").resolve())
    assert json.loads(entry.dataset.profile)["items"] == lineage.items
