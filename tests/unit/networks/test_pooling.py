import math

import pytest
import torch

from thyroid_monai import keys
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.networks.pooling import NodulePooling, outline_features, weighted_mean


def disc(size, centre, radius_x, radius_y=None):
    x = torch.arange(size)[:, None].float()
    y = torch.arange(size)[None, :].float()
    radius_y = radius_x if radius_y is None else radius_y
    inside = ((x - centre[0]) / radius_x) ** 2 + ((y - centre[1]) / radius_y) ** 2 <= 1
    return inside.float()[None, None]


def features_with_a_bump(size, centre, channels=3):
    # a feature map whose channels light up only around `centre`
    bump = disc(size, centre, 3)
    return torch.cat([bump * (c + 1) for c in range(channels)], dim=1)


def test_moving_the_nodule_moves_the_pooled_features_with_it():
    pooling = NodulePooling([3])
    for centre in ((10, 12), (40, 22), (25, 50)):
        features = features_with_a_bump(64, centre)
        on_nodule = pooling([features], disc(64, centre, 3))
        elsewhere = pooling([features], disc(64, (60 - centre[0], 60 - centre[1]), 3))
        # inside the nodule the pooled value is the bump's (1, 2, 3); away from it, nothing
        assert torch.allclose(on_nodule[0, :3], torch.tensor([1.0, 2.0, 3.0]), atol=0.02)
        assert float(elsewhere[0, :3].abs().max()) < 0.02


def test_a_translated_image_pools_the_same_features():
    pooling = NodulePooling([3])
    a = pooling([features_with_a_bump(64, (20, 20))], disc(64, (20, 20), 6))
    b = pooling([features_with_a_bump(64, (40, 36))], disc(64, (40, 36), 6))
    assert torch.allclose(a, b, atol=1e-4)


def test_an_empty_predicted_mask_falls_back_to_the_global_average():
    features = torch.rand(2, 4, 16, 16)
    pooled = weighted_mean(features, torch.zeros(2, 1, 16, 16), empty_weight=0.01)
    assert torch.allclose(pooled, features.mean(dim=(-2, -1)), atol=1e-6)
    pooling = NodulePooling([4])
    vector = pooling([features], torch.zeros(2, 1, 16, 16))
    assert torch.isfinite(vector).all()
    assert torch.allclose(vector[:, -3:], torch.zeros(2, 3))  # no outline


def test_outline_says_taller_than_wide_along_the_depth_axis():
    # (batch, channel, x, y): x lateral, y depth
    taller = outline_features(disc(64, (32, 32), 6, 12))
    wider = outline_features(disc(64, (32, 32), 12, 6))
    assert float(taller[0, 1]) > 0.5 > -0.5 > float(wider[0, 1])
    round_one = outline_features(disc(96, (48, 48), 20))
    assert abs(float(round_one[0, 2])) < 0.25  # a disc is compact
    area_share = math.exp(float(round_one[0, 0]))
    assert area_share == pytest.approx(math.pi * 20**2 / 96**2, rel=0.05)


def test_network_pools_the_nodule_and_accepts_a_guide():
    net = MultitaskUNet(num_classes=5, backbone="resnet10", level_pooling="auto")
    assert net.level_pooling == "nodule"
    image = torch.rand(2, 1, 64, 64)
    guide = torch.stack([disc(64, (20, 20), 6)[0], torch.full((1, 64, 64), float("nan"))])
    net.eval()
    with torch.no_grad():
        free, guided = net(image), net(image, guide=guide)
    assert not torch.allclose(free[keys.CLS][0], guided[keys.CLS][0])
    # an unknown truth mask (NaN) leaves the sample on the predicted mask
    assert torch.allclose(free[keys.CLS][1], guided[keys.CLS][1])


def test_nodule_pooling_needs_a_mask_head():
    assert MultitaskUNet(seg_classes=0, level_pooling="auto").level_pooling == "global"
    with pytest.raises(ValueError, match="no mask head"):
        MultitaskUNet(seg_classes=0, level_pooling="nodule")


def test_level_loss_does_not_reach_the_mask_through_the_pooling_weights():
    net = MultitaskUNet(num_classes=5, backbone="resnet10", level_pooling="nodule")
    net(torch.rand(2, 1, 64, 64))[keys.CLS].sum().backward()
    head = net.unet.segmentation_head
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in head.parameters())
