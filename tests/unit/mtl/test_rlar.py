import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thyroid_monai import keys
from thyroid_monai.engine import MultitaskTrainer
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.mtl import WeightedSum
from thyroid_monai.mtl.rlar import RLAR, rlar_penalty
from thyroid_monai.networks import MultitaskUNet


def test_penalty_matches_hand_computed_cosines():
    grad_a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    grad_b = torch.tensor([[1.0, 0.0], [-1.0, -1.0], [3.0, 0.0]])
    penalty, cosines = rlar_penalty(grad_a, grad_b, tau=0.1)
    assert cosines.tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-6)
    assert float(penalty) == pytest.approx((1.0 - 0.1) ** 2 / 3)
    absolute, _ = rlar_penalty(grad_a, grad_b, tau=0.1, power=1.0, absolute=True)
    assert float(absolute) == pytest.approx(2 * 0.9 / 3)


def test_penalty_and_its_gradient_vanish_when_every_cosine_is_at_most_tau():
    generator = torch.Generator().manual_seed(1)
    grad_a = torch.randn(6, 3, 4, 4, generator=generator, requires_grad=True)
    grad_b = torch.randn(6, 3, 4, 4, generator=generator, requires_grad=True)
    _, cosines = rlar_penalty(grad_a, grad_b, tau=0.0)
    tau = float(cosines.detach().max()) + 1e-3
    penalty, _ = rlar_penalty(grad_a, grad_b, tau=tau)
    assert float(penalty.detach()) == 0.0
    penalty.backward()
    assert torch.count_nonzero(grad_a.grad) == 0
    assert torch.count_nonzero(grad_b.grad) == 0
    # just below the largest cosine the penalty is active again
    active, _ = rlar_penalty(grad_a, grad_b, tau=float(cosines.detach().max()) - 1e-3)
    assert float(active.detach()) > 0


def test_penalty_rejects_mismatched_gradients():
    with pytest.raises(ValueError, match="shapes differ"):
        rlar_penalty(torch.ones(2, 3), torch.ones(3, 3), tau=0.1)
    with pytest.raises(ValueError, match="batch axis"):
        rlar_penalty(torch.ones(3), torch.ones(3), tau=0.1)


class TinyTwoTask(nn.Module):
    """Encoder -> latent z (2 channels x 3 positions) -> a regression head and a classifier."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 6)
        self.seg_head = nn.Sequential(nn.Flatten(), nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 2))
        self.cls_head = nn.Sequential(nn.Tanh(), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x):
        latent = torch.tanh(self.encoder(x)).view(-1, 2, 3)
        return {
            keys.LATENT: latent,
            keys.SEG: self.seg_head(latent),
            keys.CLS: self.cls_head(latent),
        }


def tiny_losses(outputs, targets):
    return {
        keys.SEG: F.mse_loss(outputs[keys.SEG], targets[keys.SEG]),
        keys.CLS: F.cross_entropy(outputs[keys.CLS], targets[keys.CLS]),
    }


@pytest.mark.parametrize(("latent", "absolute"), [("deepest", False), ("pooled", True)])
def test_penalty_parameter_gradient_agrees_with_finite_differences(latent, absolute):
    torch.manual_seed(0)
    model = TinyTwoTask().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    targets = {
        keys.SEG: torch.randn(5, 2, dtype=torch.float64),
        keys.CLS: torch.tensor([0, 1, 2, 1, 0]),
    }
    # tau = -1 keeps every sample on the smooth side of the hinge
    rlar = RLAR(tau=-1.0, latent=latent, absolute=absolute)
    names = [name for name, _ in model.named_parameters()]

    def penalty_of(*params):
        outputs = torch.func.functional_call(model, dict(zip(names, params, strict=True)), (x,))
        return rlar.penalty(tiny_losses(outputs, targets), outputs)[0]

    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert float(penalty_of(*params).detach()) > 0
    assert torch.autograd.gradcheck(penalty_of, params, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_detaching_one_side_stops_the_gradient_into_its_head():
    torch.manual_seed(0)
    model = TinyTwoTask()
    x = torch.randn(6, 4)
    targets = {keys.SEG: torch.randn(6, 2), keys.CLS: torch.tensor([0, 1, 2, 1, 0, 2])}
    outputs = model(x)
    penalty, _ = RLAR(tau=-1.0, detach=keys.SEG).penalty(tiny_losses(outputs, targets), outputs)
    seg_grads = torch.autograd.grad(penalty, list(model.seg_head.parameters()), allow_unused=True,
                                    retain_graph=True)  # fmt: skip
    assert all(g is None or torch.count_nonzero(g) == 0 for g in seg_grads)
    cls_grads = torch.autograd.grad(penalty, list(model.cls_head.parameters()), allow_unused=True)
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in cls_grads)


def per_sample_latent_gradients(net, features, targets):
    """RLAR's per-sample gradients at the latent, for given (fixed) encoder features."""
    leaves = [f.detach().requires_grad_() for f in features]
    outputs = net.heads(leaves)
    losses = MultitaskLoss()(outputs, targets)
    rlar = RLAR()
    latents = rlar.latents(outputs)
    return [rlar.latent_gradients(losses[t], latents, create_graph=False)[0] for t in rlar.tasks]


def batch_of_four(net):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(4, 1, 64, 64, generator=generator)
    masks = (torch.rand(4, 1, 64, 64, generator=generator) > 0.6).float()
    # the encoder (BatchNorm in training mode) runs once on the whole batch: only what comes
    # after the latent is under test
    features = net.encode(images)
    return features, {keys.SEG: masks, keys.CLS: torch.tensor([0, 1, 2, 1])}


def sliced(features, targets, index):
    rows = slice(index, index + 1) if isinstance(index, int) else index
    return [f[rows] for f in features], {task: t[rows] for task, t in targets.items()}


@pytest.mark.parametrize("norm", ["instance", "group", "none"])
def test_per_sample_latent_gradients_do_not_mix_samples(norm):
    net = MultitaskUNet(num_classes=3, decoder_norm=norm, dropout=0.0).train()
    features, targets = batch_of_four(net)
    together = per_sample_latent_gradients(net, features, targets)
    for i in range(4):
        alone = per_sample_latent_gradients(net, *sliced(features, targets, i))
        for task_together, task_alone in zip(together, alone, strict=True):
            torch.testing.assert_close(task_together[i : i + 1], task_alone, rtol=1e-4, atol=1e-6)


def test_batchnorm_decoder_mixes_samples_and_the_trainer_refuses_it():
    net = MultitaskUNet(num_classes=3, decoder_norm="batch", dropout=0.0).train()
    features, targets = batch_of_four(net)
    together = per_sample_latent_gradients(net, *sliced(features, targets, slice(0, 2)))
    alone = per_sample_latent_gradients(net, *sliced(features, targets, 0))
    assert not torch.allclose(together[0][:1], alone[0], rtol=1e-3, atol=1e-6)
    assert not net.samples_independent_after_latent
    with pytest.raises(ValueError, match="BatchNorm decoder"):
        MultitaskTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[{}],
                         network=net, optimizer=torch.optim.SGD(net.parameters(), 0.1),
                         loss_function=MultitaskLoss(),
                         regulariser=RLAR(warmup_epochs=0))  # fmt: skip


def fake_losses_and_outputs():
    latent = torch.randn(3, 2, 2, 2, requires_grad=True)
    weights = torch.randn(2, 2, 2)
    losses = {
        keys.SEG: (latent * weights).pow(2).mean(),
        keys.CLS: (latent * weights.flip(0)).sin().mean(),
        keys.RAD: latent.mean() ** 2,
    }
    return losses, {keys.LATENT: latent}


@pytest.mark.parametrize("fold", ["split", "seg", "cls", "separate"])
def test_fold_adds_the_weighted_penalty_where_configured(fold):
    torch.manual_seed(0)
    losses, outputs = fake_losses_and_outputs()
    rlar = RLAR(weight=0.2, tau=-1.0, fold=fold, warmup_epochs=0, every=1)
    folded, diagnostics = rlar(losses, outputs, epoch=1, iteration=1)
    term = 0.2 * diagnostics["rlar_penalty"]
    value = lambda losses, task: float(torch.as_tensor(losses.get(task, 0.0)).detach())  # noqa: E731
    added = {task: value(folded, task) - value(losses, task) for task in folded}
    expected = {
        "split": {keys.SEG: term / 2, keys.CLS: term / 2, keys.RAD: 0.0},
        "seg": {keys.SEG: term, keys.CLS: 0.0, keys.RAD: 0.0},
        "cls": {keys.SEG: 0.0, keys.CLS: term, keys.RAD: 0.0},
        "separate": {keys.SEG: 0.0, keys.CLS: 0.0, keys.RAD: 0.0, "rlar": term},
    }[fold]
    assert added == pytest.approx(expected, abs=1e-6)
    assert diagnostics["rlar_weight"] == pytest.approx(0.2)
    assert -1.0 <= diagnostics["rlar_cos_mean"] <= diagnostics["rlar_cos_max"] <= 1.0


def test_warmup_every_and_lazy_scaling():
    losses, outputs = fake_losses_and_outputs()
    rlar = RLAR(weight=0.1, warmup_epochs=2, every=3)
    active = [(e, i) for e in (1, 2, 3) for i in range(1, 8) if rlar.is_active(e, i)]
    assert active == [(3, 1), (3, 4), (3, 7)]
    folded, diagnostics = rlar(losses, outputs, epoch=1, iteration=1)
    assert diagnostics == {"rlar_weight": 0.0}
    assert folded == losses
    _, diagnostics = rlar(losses, outputs, epoch=3, iteration=4)
    assert diagnostics["rlar_weight"] == pytest.approx(0.3)
    assert RLAR(weight=0.1, every=3, lazy_scaling=False).applied_weight() == pytest.approx(0.1)


def test_pooled_and_encoder_latents():
    net = MultitaskUNet(num_classes=3, expose_encoder_maps=True)
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(4, 1, 64, 64, generator=generator)
    targets = {keys.SEG: (images > 0.6).float(), keys.CLS: torch.tensor([0, 1, 2, 1])}
    outputs = net(images)
    losses = MultitaskLoss()(outputs, targets)
    pooled = RLAR(latent="pooled")
    grads = pooled.latent_gradients(losses[keys.SEG], pooled.latents(outputs), create_graph=False)
    assert grads[0].shape == (4, 512)
    encoder = RLAR(latent="encoder", tau=-1.0)
    maps = encoder.latents(outputs)
    assert [m.shape[1] for m in maps] == [64, 64, 128, 256, 512]  # resnet18: stem, 4 stages
    penalty, cosines = encoder.penalty(losses, outputs)
    assert cosines.shape == (4,)
    assert float(penalty.detach()) > 0
    with pytest.raises(ValueError, match="expose_encoder_maps"):
        encoder.latents({keys.LATENT: outputs[keys.LATENT]})


def test_invalid_options_name_the_problem():
    with pytest.raises(ValueError, match="two different tasks"):
        RLAR(tasks=("seg", "seg"))
    with pytest.raises(ValueError, match="detach"):
        RLAR(detach="rad")
    with pytest.raises(ValueError, match="fold"):
        RLAR(fold="rad")
    with pytest.raises(ValueError, match="latent"):
        RLAR(latent="bottleneck")
    with pytest.raises(ValueError, match="missing"):
        RLAR().penalty({keys.SEG: torch.tensor(1.0)}, {})
    assert "tau=0.3" in repr(RLAR(tau=0.3))


def test_trainer_folds_rlar_before_the_gradient_method_and_reports_it():
    seen = {}

    class Recording(WeightedSum):
        name = "recording"

        def backward(self, losses, **kwargs):
            seen.update({task: float(loss.detach()) for task, loss in losses.items()})
            return super().backward(losses, **kwargs)

    generator = torch.Generator().manual_seed(0)
    batch = {keys.IMAGE: torch.rand(2, 1, 64, 64, generator=generator),
             keys.LABEL: (torch.rand(2, 1, 64, 64, generator=generator) > 0.5).float(),
             keys.TIRADS: torch.tensor([0, 2])}  # fmt: skip
    net = MultitaskUNet(num_classes=3)
    trainer = MultitaskTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[batch],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.01),
        loss_function=MultitaskLoss(),
        gradient_method=Recording(),
        regulariser=RLAR(weight=0.5, tau=-1.0, fold="cls", warmup_epochs=0, every=1),
    )
    trainer.run()
    output = trainer.state.output[0]
    assert output["rlar_penalty"] > 0
    assert seen[keys.CLS] == pytest.approx(
        output["loss_cls"] + 0.5 * output["rlar_penalty"], rel=1e-5
    )
    assert seen[keys.SEG] == pytest.approx(output["loss_seg"], rel=1e-6)
    assert output["loss"] == pytest.approx(output["loss_seg"] + output["loss_cls"], rel=1e-5)
    assert "train_rlar_cos_mean" in trainer.state.metrics


def test_an_all_zero_penalty_is_not_folded_so_the_backward_skips_the_second_order_pass():
    losses, outputs = fake_losses_and_outputs()
    folded, diagnostics = RLAR(tau=0.999, warmup_epochs=0)(losses, outputs, epoch=1, iteration=1)
    assert diagnostics["rlar_penalty"] == 0.0
    assert diagnostics["rlar_excess_share"] == 0.0
    assert all(folded[task] is losses[task] for task in losses)
    separate, _ = RLAR(tau=0.999, fold="separate", warmup_epochs=0)(
        losses, outputs, epoch=1, iteration=1
    )
    assert float(separate["rlar"].detach()) == 0.0  # the separate objective always exists
