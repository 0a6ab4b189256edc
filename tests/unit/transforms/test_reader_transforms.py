import numpy as np
import pytest
import torch

from thyroid_monai import keys
from thyroid_monai.tasks import TaskSet
from thyroid_monai.transforms import RandReaderd, SoftReaderLabelsd, reader_transform


def three_readers():
    masks = torch.zeros(3, 4, 4)
    masks[0, :2] = 1  # reader 0: top half
    masks[1, :, :2] = 1  # reader 1: left half
    masks[2] = 1  # reader 2: everything
    return {
        keys.CASE_ID: "P1_1",
        keys.LABEL: torch.zeros(1, 4, 4),
        keys.TIRADS: torch.tensor(0),
        keys.LABEL_READERS: masks,
        keys.TIRADS_READERS: torch.tensor([1, 3, 4]),
        "desc_foci_readers": torch.tensor([[0.0, 1, 0, 0], [0, 1, 0, 1], [np.nan] * 4]),
    }


def test_one_drawn_reader_gives_every_target_of_the_item():
    transform = RandReaderd(labels={keys.TIRADS: keys.TIRADS_READERS})
    transform.set_random_state(seed=0)
    drawn = []
    for _ in range(30):
        sample = transform(three_readers())
        reader = [1, 3, 4].index(int(sample[keys.TIRADS]))
        torch.testing.assert_close(
            sample[keys.LABEL], three_readers()[keys.LABEL_READERS][reader : reader + 1]
        )
        assert keys.LABEL_READERS not in sample
        assert keys.TIRADS_READERS not in sample
        drawn.append(reader)
    assert set(drawn) == {0, 1, 2}
    again = RandReaderd()
    again.set_random_state(seed=0)
    assert [[1, 3, 4].index(int(again(three_readers())[keys.TIRADS])) for _ in range(30)] == drawn


def test_reader_counts_must_agree_and_sources_must_exist():
    sample = three_readers()
    sample[keys.TIRADS_READERS] = torch.tensor([1, 3])
    with pytest.raises(ValueError, match=r"P1_1.*reader counts differ"):
        RandReaderd()(sample)
    with pytest.raises(KeyError, match=r"P1_1.*label_readers"):
        RandReaderd()({keys.CASE_ID: "P1_1", keys.TIRADS_READERS: torch.tensor([1])})
    kept = RandReaderd(allow_missing_keys=True)({keys.LABEL: "consensus", keys.CASE_ID: "P2"})
    assert kept[keys.LABEL] == "consensus"


def test_soft_labels_average_the_readers():
    transform = SoftReaderLabelsd(
        labels={keys.TIRADS: keys.TIRADS_READERS},
        num_classes={keys.TIRADS: 5},
        multilabel={"desc_foci": "desc_foci_readers"},
    )
    sample = transform(three_readers())
    expected_mask = torch.tensor([[3, 3, 2, 2], [3, 3, 2, 2], [2, 2, 1, 1], [2, 2, 1, 1]]) / 3
    torch.testing.assert_close(sample[keys.LABEL], expected_mask[None].float())
    torch.testing.assert_close(sample[keys.TIRADS], torch.tensor([0, 1, 0, 1, 1]) / 3)
    # the third reader gave no foci: the shares are over the two who did
    torch.testing.assert_close(sample["desc_foci"], torch.tensor([0.0, 1.0, 0.0, 0.5]))


def test_soft_labels_of_unknown_readers_are_unknown():
    transform = SoftReaderLabelsd(
        masks={}, labels={"desc_shape": "r"}, num_classes={"desc_shape": 2}
    )
    sample = transform({"r": torch.tensor([-1, -1]), keys.CASE_ID: "P3"})
    assert torch.isnan(sample["desc_shape"]).all()
    partial = transform({"r": torch.tensor([1, -1, 1, 0]), keys.CASE_ID: "P3"})
    torch.testing.assert_close(partial["desc_shape"], torch.tensor([1 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="num_classes"):
        SoftReaderLabelsd(labels={"x": "y"})


def test_reader_transform_modes():
    tasks = TaskSet(label_grouping="risk3")
    assert len(reader_transform("consensus", tasks).transforms) == 0
    sample = reader_transform("soft", TaskSet(descriptors=True))
    assert isinstance(sample, SoftReaderLabelsd)
    assert sample.num_classes["tirads"] == 5
    assert sample.num_classes["desc_composition"] == 5
    assert "desc_foci" in sample.multilabel
    sample = reader_transform("soft", tasks)
    assert sample.num_classes == {"tirads": 3}
    assert isinstance(reader_transform("sample", tasks), RandReaderd)
    with pytest.raises(ValueError, match="reader_mode"):
        reader_transform("vote", tasks)  # type: ignore[arg-type]
