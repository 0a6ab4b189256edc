"""RLAR's view of the task gradients: the alignment monitor, per-sample exactness, the encoder."""

import numpy as np
import pytest
import torch
from ignite.engine import Events
from torch import nn

from thyroid_monai import keys
from thyroid_monai.engine import MultitaskTrainer
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.mtl.alignment import AlignmentMonitor
from thyroid_monai.mtl.rlar import RLAR, batch_coupling_layers
from thyroid_monai.networks import MultitaskUNet


def batch_of_four(net):
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(4, 1, 64, 64, generator=generator)
    masks = (torch.rand(4, 1, 64, 64, generator=generator) > 0.6).float()
    # the ResNet encoder's BatchNorm mixes samples in training: encode once, test what follows
    features = [f.detach() for f in net.encode(images)]
    return features, {keys.SEG: masks, keys.CLS: torch.tensor([0, 1, 2, 1])}


def cosines_of(net, rlar, features, targets):
    leaves = [f.clone().requires_grad_() for f in features]
    outputs = net.heads(leaves)
    losses = MultitaskLoss()(outputs, targets)
    _, cosines = rlar.penalty(losses, outputs)
    return cosines.detach()


@pytest.mark.parametrize("latent", ["deepest", "pooled"])
@pytest.mark.parametrize("level_pooling", ["nodule", "global"])
def test_a_batch_of_four_equals_four_batches_of_one(latent, level_pooling):
    torch.manual_seed(0)
    net = MultitaskUNet(num_classes=5, level_pooling=level_pooling, dropout=0.0).train()
    features, targets = batch_of_four(net)
    rlar = RLAR(latent=latent, tau=-1.0)
    together = cosines_of(net, rlar, features, targets)
    for i in range(4):
        alone = cosines_of(net, rlar, [f[i : i + 1] for f in features],
                           {task: t[i : i + 1] for task, t in targets.items()})  # fmt: skip
        # float summation order differs between batch sizes; mixing samples moves cosines by 1e-2
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-3, atol=1e-3)


def test_the_encoder_latent_is_refused_when_the_encoder_mixes_samples():
    net = MultitaskUNet(num_classes=3)
    assert batch_coupling_layers(net.unet.encoder)  # ResNet encoders use BatchNorm
    with pytest.raises(ValueError, match=r"batch statistics .*bn1.*'deepest' or 'pooled'"):
        RLAR(latent="encoder").prepare(net)
    assert not net.expose_encoder_maps
    RLAR(latent="pooled").prepare(net)  # the exact latents need nothing


class GroupNormEncoderNet(nn.Module):
    """Two encoder maps with per-sample normalisation, a mask head and a level head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.GroupNorm(2, 6))
        self.encoder = nn.ModuleList([self.stem, self.deep])
        self.seg_head = nn.Conv2d(6, 2, 1)
        self.cls_head = nn.Linear(6, 3)
        self.expose_encoder_maps = False

    def forward(self, image):
        shallow = self.stem(image)
        deep = torch.tanh(self.deep(shallow))
        seg = nn.functional.interpolate(self.seg_head(deep), size=image.shape[-2:])
        outputs = {keys.LATENT: deep, keys.SEG: seg, keys.CLS: self.cls_head(deep.mean((2, 3)))}
        if self.expose_encoder_maps:
            outputs[keys.ENCODER_MAPS] = (shallow, deep)
        return outputs


def test_the_encoder_latent_is_exact_and_allowed_with_per_sample_normalisation():
    torch.manual_seed(0)
    net = GroupNormEncoderNet()
    rlar = RLAR(latent="encoder", tau=-1.0)
    rlar.prepare(net)
    assert net.expose_encoder_maps
    images = torch.rand(4, 1, 8, 8)
    targets = {keys.SEG: (images > 0.5).float(), keys.CLS: torch.tensor([0, 1, 2, 1])}

    def cosines(rows):
        outputs = net(images[rows])
        losses = MultitaskLoss()(outputs, {task: t[rows] for task, t in targets.items()})
        return rlar.penalty(losses, outputs)[1].detach()

    together = cosines(slice(0, 4))
    for i in range(4):
        torch.testing.assert_close(together[i : i + 1], cosines(slice(i, i + 1)),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def test_the_monitor_reports_rlar_s_own_cosines_as_epoch_quantiles():
    torch.manual_seed(0)
    net = MultitaskUNet(num_classes=3, dropout=0.0).train()
    images = torch.rand(4, 1, 64, 64)
    targets = {keys.SEG: (images > 0.6).float(), keys.CLS: torch.tensor([0, 1, 2, 1])}
    outputs = net(images)
    losses = MultitaskLoss()(outputs, targets)
    monitor = AlignmentMonitor(every=3)
    assert [i for i in range(1, 8) if monitor.due(i)] == [1, 4, 7]
    measured = monitor.measure(losses, outputs)
    for latent in ("deepest", "pooled"):
        _, expected = RLAR(latent=latent).penalty(losses, outputs)
        np.testing.assert_allclose(measured[latent], expected.detach().numpy(), atol=1e-5)
    # the graph survives for the step's own backward
    (losses[keys.SEG] + losses[keys.CLS]).backward()
    statistics = monitor.epoch_statistics()
    pooled = measured["pooled"]
    assert statistics["align_pooled_p50"] == pytest.approx(float(np.median(pooled)))
    assert statistics["align_pooled_abs_mean"] == pytest.approx(float(np.abs(pooled).mean()))
    assert statistics["align_deepest_p05"] <= statistics["align_deepest_p95"]
    assert statistics["align_pooled_share_above_tau"] == pytest.approx(float((pooled > 0.1).mean()))
    monitor.reset()
    assert monitor.epoch_statistics() == {}
    with pytest.raises(ValueError, match="every"):
        AlignmentMonitor(every=0)


def test_the_trainer_records_alignment_metrics_every_epoch_without_rlar():
    torch.manual_seed(0)
    net = MultitaskUNet(num_classes=3, dropout=0.0)
    images = torch.rand(4, 1, 64, 64)
    batch = {keys.IMAGE: images, keys.LABEL: (images > 0.6).float(),
             keys.TIRADS: torch.tensor([0, 1, 2, 1])}  # fmt: skip
    trainer = MultitaskTrainer(device=torch.device("cpu"), max_epochs=2,
                               train_data_loader=[batch, batch, batch], network=net,
                               optimizer=torch.optim.SGD(net.parameters(), 0.01),
                               loss_function=MultitaskLoss(), alignment_every=2)  # fmt: skip
    seen = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(dict(e.state.metrics)))
    trainer.run()
    assert len(seen) == 2
    for metrics in seen:
        for latent in ("deepest", "pooled"):
            assert -1.0 <= metrics[f"train_align_{latent}_p05"] <= 1.0
            assert metrics[f"train_align_{latent}_p05"] <= metrics[f"train_align_{latent}_p95"]
    with pytest.raises(ValueError, match="alignment_every"):
        MultitaskTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch],
                         network=net, optimizer=torch.optim.SGD(net.parameters(), 0.01),
                         loss_function=MultitaskLoss(), alignment_every=-1)  # fmt: skip
