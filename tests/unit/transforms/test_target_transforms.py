import json

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

from thyroid_monai import descriptor_tasks, keys
from thyroid_monai.io.nifti import write_nifti_2d
from thyroid_monai.tirads import UnknownLabelError
from thyroid_monai.transforms import (
    DescriptorsToIndicesd,
    PixelSpacingd,
    RadiomicsTargetd,
    radiomics_feature_names,
)

FULL = {
    "composition": "solid",
    "echogenicity": "very_hypo",
    "shape": "taller_than_wide",
    "margin": "lobulated_irregular",
    "foci": ["macrocalcification", "punctate"],
}


def test_descriptors_become_indices_and_readers_are_stacked():
    sample = DescriptorsToIndicesd()(
        {keys.DESCRIPTORS: FULL, keys.DESCRIPTORS_READERS: [FULL, {"composition": "cystic"}]}
    )
    assert int(sample["desc_composition"]) == descriptor_tasks.class_names("composition").index(
        "solid"
    )
    assert int(sample["desc_shape"]) == 1
    assert sample["desc_foci"].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert sample["desc_composition_readers"].tolist() == [3, 0]
    assert sample["desc_margin_readers"].tolist() == [2, -1]
    assert torch.isnan(sample["desc_foci_readers"][1]).all()
    assert keys.DESCRIPTORS not in sample
    assert keys.DESCRIPTORS_READERS not in sample


def test_items_without_descriptors_get_unknown_targets_and_bad_values_name_the_sample():
    sample = DescriptorsToIndicesd()({keys.CASE_ID: "D7"})
    assert all(int(sample[t]) == -1 for t in descriptor_tasks.DESCRIPTOR_TASKS[:4])
    assert torch.isnan(sample["desc_foci"]).all()
    with pytest.raises(UnknownLabelError, match=r"D7.*'descriptors'.*'spiky'"):
        DescriptorsToIndicesd()({keys.CASE_ID: "D7", keys.DESCRIPTORS: {"margin": "spiky"}})


def test_radiomics_targets_and_their_feature_names(tmp_path):
    transform = RadiomicsTargetd(num_features=3)
    sample = transform({keys.RADIOMICS: [0.5, None, -1.0]})
    assert sample[keys.RADIOMICS][0] == 0.5
    assert torch.isnan(sample[keys.RADIOMICS][1])
    assert torch.isnan(transform({keys.CASE_ID: "A"})[keys.RADIOMICS]).all()
    with pytest.raises(ValueError, match=r"B.*2 values.*3 features"):
        transform({keys.CASE_ID: "B", keys.RADIOMICS: [1.0, 2.0]})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [], "radiomics": {"features": ["a", "b"]}}))
    assert radiomics_feature_names(datalist) == ["a", "b"]
    datalist.write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match=r"datalist.json.*radiomics"):
        radiomics_feature_names(datalist)


def test_pixel_spacing_follows_the_resize_and_stays_unknown_when_unknown(tmp_path):
    write_nifti_2d(tmp_path / "known.nii.gz", np.zeros((40, 30), np.uint8), (0.1, 0.2))
    write_nifti_2d(tmp_path / "unknown.nii.gz", np.zeros((40, 30), np.uint8), None)
    pipeline = Compose([
        LoadImaged(keys=keys.IMAGE, image_only=True),
        EnsureChannelFirstd(keys=keys.IMAGE, channel_dim="no_channel"),
        Resized(keys=keys.IMAGE, spatial_size=[15, 20]),
        PixelSpacingd(),
    ])  # fmt: skip
    known = pipeline({keys.IMAGE: str(tmp_path / "known.nii.gz"), keys.SPACING: [0.1, 0.2]})
    # 30 x 40 pixels (x, y) resized to 15 x 20: twice the spacing on both axes
    torch.testing.assert_close(known[keys.SPACING], torch.tensor([0.2, 0.4]))
    unknown = pipeline({keys.IMAGE: str(tmp_path / "unknown.nii.gz"), keys.SPACING: None})
    assert torch.isnan(unknown[keys.SPACING]).all()


def test_missing_targets_get_placeholders_and_an_item_with_none_is_named():
    import pytest
    import torch

    from thyroid_monai.losses import known_masks
    from thyroid_monai.transforms import MissingTargetsd

    fill = MissingTargetsd(mask=True, level=True)
    image = torch.rand(1, 8, 6)
    level_only = fill({"image": image, "tirads": torch.tensor(2), "case_id": "a"})
    assert level_only["label"].shape == (1, 8, 6)
    assert torch.isnan(level_only["label"]).all()
    mask_only = fill({"image": image, "label": torch.ones(1, 8, 6), "case_id": "b"})
    assert int(mask_only["tirads"]) == -1
    batch = torch.stack([level_only["label"], mask_only["label"]])
    assert known_masks(batch).tolist() == [False, True]
    with pytest.raises(ValueError, match="datalist item c has neither a mask nor a level"):
        fill({"image": image, "case_id": "c"})
    # a mask-only model does not need levels and never invents a mask
    assert "tirads" not in MissingTargetsd(mask=True, level=False)(
        {"image": image, "label": torch.ones(1, 8, 6), "case_id": "d"}
    )
