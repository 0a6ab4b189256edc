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


def test_structured_report_heads_and_ordinal_level_head():
    net = MultitaskUNet(num_classes=5, descriptor_heads=True, level_head="coral")
    out = net(torch.rand(2, 1, 32, 32))
    shapes = {task: tuple(out[task].shape) for task in net.tasks}
    assert shapes == {
        "seg": (2, 2, 32, 32),
        "cls": (2, 5),
        "desc_composition": (2, 5),
        "desc_echogenicity": (2, 5),
        "desc_shape": (2, 2),
        "desc_margin": (2, 5),
        "desc_foci": (2, 4),
    }
    assert out[keys.CLS_ORDINAL].shape == (2, 4)
    torch.testing.assert_close(out[keys.CLS].exp().sum(dim=1), torch.ones(2))


@pytest.mark.parametrize(
    "options",
    [
        {"num_classes": 5},
        {"num_classes": 5, "radiomics_dim": 4},
        {"num_classes": 0, "radiomics_dim": 4},
        {"num_classes": 3, "seg_classes": 0},
        {"num_classes": 5, "descriptor_heads": True, "radiomics_dim": 3},
    ],
)
def test_every_parameter_is_shared_or_owned_by_exactly_one_task(options):
    net = MultitaskUNet(**options)
    shared = {id(p) for p in net.shared_parameters()}
    owned = [{id(p) for p in params} for params in net.task_parameters().values()]
    everything = {id(p) for p in net.parameters()}
    assert set(net.task_parameters()) == set(net.tasks)
    assert sum(len(o) for o in owned) == len(set().union(*owned))  # no parameter owned twice
    assert shared.isdisjoint(set().union(*owned))
    assert shared | set().union(*owned) == everything
    embedding = {id(p) for p in net.embedding.parameters()} if net.embedding is not None else set()
    readers = [t for t in net.tasks if t != keys.SEG]
    assert (embedding <= shared) == (len(readers) > 1)


def test_task_parameters_receive_gradient_only_from_their_task():
    net = MultitaskUNet(num_classes=3, radiomics_dim=2, descriptor_heads=True, dropout=0.0)
    out = net(torch.rand(2, 1, 32, 32))
    for task, params in net.task_parameters().items():
        for other in net.tasks:
            if other == task:
                continue
            grads = torch.autograd.grad(out[other].sum(), params, allow_unused=True,
                                        retain_graph=True)  # fmt: skip
            assert all(g is None for g in grads), (task, other)


@pytest.mark.parametrize("norm", ["instance", "group", "none", "batch"])
def test_decoder_normalisation_is_configurable(norm):
    net = MultitaskUNet(num_classes=2, decoder_norm=norm)
    kinds = {type(m).__name__ for m in net.unet.decoder.modules()}
    expected = {"instance": "InstanceNorm2d", "group": "GroupNorm", "batch": "BatchNorm2d"}
    norms = kinds & {"InstanceNorm2d", "GroupNorm", "BatchNorm2d"}
    assert norms == ({expected[norm]} if norm in expected else set())
    assert net.samples_independent_after_latent == (norm != "batch")
    with pytest.raises(ValueError, match="decoder_norm"):
        MultitaskUNet(decoder_norm="layer")


def test_level_only_model_has_no_decoder_and_can_expose_encoder_maps():
    net = MultitaskUNet(num_classes=3, seg_classes=0, expose_encoder_maps=True)
    assert not hasattr(net.unet, "decoder")
    out = net(torch.rand(2, 1, 32, 32))
    assert len(out[keys.ENCODER_MAPS]) == 5
    assert out[keys.ENCODER_MAPS][-1] is out[keys.LATENT]


def test_training_checkpoint_file_is_accepted_as_weights(tmp_path):
    source = MultitaskUNet(num_classes=2)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    loaded = MultitaskUNet(num_classes=2, weights_path=tmp_path / "checkpoint.pt")
    for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_space_to_depth_runs_the_encoder_on_the_folded_grid_and_predicts_at_full_size():
    torch.manual_seed(0)
    folded = MultitaskUNet(backbone="resnet10", level_pooling="nodule", space_to_depth=2)
    plain = MultitaskUNet(backbone="resnet10", level_pooling="nodule")
    image = torch.rand(2, 1, 128, 64)  # not square: the two sides fold alike
    out = folded(image)
    assert out[keys.SEG].shape == (2, 2, 128, 64)  # the mask at the input's resolution
    assert out[keys.CLS].shape == (2, 5)
    # the encoder sees the grid of a half-size input, with 4 channels
    folded_maps = folded.encode(image)
    plain_maps = plain.encode(torch.rand(2, 1, 64, 32))
    assert [m.shape for m in folded_maps] == [m.shape for m in plain_maps]
    assert folded.architecture["space_to_depth"] == 2
    assert folded.nodule_pooling is not None
    assert folded.nodule_pooling.ring_pixels == 8
    # one input pixel is not averaged with its neighbours: moving a bright focus by one pixel
    # inside a 2x2 block changes what the encoder reads (a 2x downsampled input could not tell)
    first, second = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    first[..., 10, 10], second[..., 10, 11] = 1.0, 1.0
    folded.eval()
    with torch.no_grad():
        assert not torch.equal(folded.encode(first)[0], folded.encode(second)[0])
    with pytest.raises(ValueError, match="space_to_depth"):
        MultitaskUNet(space_to_depth=0)
