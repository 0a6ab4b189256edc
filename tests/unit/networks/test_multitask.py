import pytest
import torch

from thyroid_monai import keys
from thyroid_monai.networks import MultitaskUNet


def test_multitask_outputs():
    net = MultitaskUNet(num_classes=5, backbone="resnet18", radiomics_dim=12, radiomics_slice=8)
    out = net(torch.rand(2, 1, 64, 64))
    assert out[keys.SEG].shape == (2, 2, 64, 64)
    assert out[keys.CLS].shape == (2, 5)
    assert out[keys.RAD].shape == (2, 12)
    assert out[keys.LATENT].shape == (2, 512, 2, 2)
    assert net.tasks == (keys.SEG, keys.CLS, keys.RAD)


def test_single_task_variants_share_the_code():
    mask_only = MultitaskUNet(num_classes=0)
    assert set(mask_only(torch.rand(1, 1, 64, 64))) == {keys.SEG, keys.LATENT}
    level_only = MultitaskUNet(seg_classes=0, num_classes=3, backbone="efficientnet-b0")
    assert set(level_only(torch.rand(1, 1, 64, 64))) == {keys.CLS, keys.LATENT}
    with pytest.raises(ValueError, match="at least one task"):
        MultitaskUNet(num_classes=0, seg_classes=0)


def test_shared_and_task_parameters_are_disjoint_and_complete():
    net = MultitaskUNet(num_classes=5, radiomics_dim=4)
    shared = {id(p) for p in net.shared_parameters()}
    task = {id(p) for params in net.task_parameters().values() for p in params}
    assert shared.isdisjoint(task)
    assert shared | task == {id(p) for p in net.parameters()}


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="resnet18"):
        MultitaskUNet(backbone="resnet7")


def test_local_weights_file_is_loaded(tmp_path):
    source = MultitaskUNet(num_classes=2)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = MultitaskUNet(num_classes=2, weights_path=tmp_path / "w.pt")
    for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
