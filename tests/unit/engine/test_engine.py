import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from sklearn.metrics import accuracy_score, f1_score

from thyroid_monai import keys
from thyroid_monai.engine import LevelScore, MultitaskEvaluator, MultitaskTrainer
from thyroid_monai.engine.scores import accuracy, macro_f1
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.mtl import GradientMethod, WeightedSum, build_gradient_method
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.tirads import UnknownLabelError
from thyroid_monai.transforms import TiradsToIndexd


def batches(count=8, size=32):
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(count):
        image = torch.rand(1, size, size, generator=generator)
        label = torch.zeros(1, size, size)
        label[:, 8:20, 10:24] = 1
        items.append(
            {keys.IMAGE: image + label, keys.LABEL: label, keys.TIRADS: torch.tensor(i % 3)}
        )
    return DataLoader(Dataset(items), batch_size=4)


class CountingSum(WeightedSum):
    name = "counting"
    calls = 0

    def backward(self, losses, *, shared_params, task_params=None, latent=None, epoch=0):
        CountingSum.calls += 1
        assert latent is not None
        assert len(shared_params) > 0
        assert set(task_params) == {"seg", "cls"}
        assert epoch in (1, 2)
        return super().backward(losses, shared_params=shared_params, latent=latent)


def test_trainer_step_goes_through_the_gradient_method_and_records_task_losses():
    net = MultitaskUNet(num_classes=3, backbone="resnet18")
    before = [p.detach().clone() for p in net.parameters()]
    trainer = MultitaskTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=batches(),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=MultitaskLoss(),
        gradient_method=CountingSum(task_weights={"cls": 0.5}),
    )
    trainer.run()
    assert CountingSum.calls == 4
    output = trainer.state.output[0]
    assert {"loss", "loss_seg", "loss_cls", "weight_cls"} <= set(output)
    assert output["loss"] == pytest.approx(output["loss_seg"] + 0.5 * output["loss_cls"], rel=1e-5)
    assert {"train_loss", "train_loss_seg", "train_loss_cls"} <= set(trainer.state.metrics)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_trainer_refuses_amp():
    net = MultitaskUNet(num_classes=3)
    with pytest.raises(ValueError, match="amp"):
        MultitaskTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=batches(),
                         network=net, optimizer=torch.optim.SGD(net.parameters(), 0.1),
                         loss_function=MultitaskLoss(), amp=True)  # fmt: skip


def test_evaluator_exposes_each_task_and_scores_levels():
    net = MultitaskUNet(num_classes=3)
    evaluator = MultitaskEvaluator(
        device=torch.device("cpu"),
        val_data_loader=batches(),
        network=net,
        key_val_metric={"val_accuracy": LevelScore("accuracy")},
        additional_metrics={"val_macro_f1": LevelScore("macro_f1")},
    )
    evaluator.run()
    assert 0.0 <= evaluator.state.metrics["val_accuracy"] <= 1.0
    output = evaluator.state.output[0]
    assert output[keys.PRED_CLS].shape == (3,)
    assert output["pred"].shape == (2, 32, 32)


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    probabilities = rng.dirichlet(np.ones(4), size=200)
    predictions = probabilities.argmax(axis=1)
    assert accuracy(labels, probabilities) == pytest.approx(accuracy_score(labels, predictions))
    assert macro_f1(labels, probabilities) == pytest.approx(
        f1_score(labels, predictions, average="macro")
    )


def test_registry_rejects_unknown_names_and_bad_weights():
    assert isinstance(build_gradient_method("sum"), GradientMethod)
    with pytest.raises(KeyError, match=r"registered: .*sum"):
        build_gradient_method("magic")
    with pytest.raises(ValueError, match="non-negative"):
        WeightedSum(task_weights={"seg": -1.0})
    assert repr(WeightedSum({"cls": 0.5})) == "WeightedSum(task_weights={'cls': 0.5})"


def test_tirads_to_index_names_the_sample_with_a_bad_label():
    transform = TiradsToIndexd(keys=["tirads", "tirads_readers"], grouping="risk3")
    sample = transform({"tirads": "TR4", "tirads_readers": ["TR1", "TR5"], "case_id": "P1_1"})
    assert int(sample["tirads"]) == 1
    assert sample["tirads_readers"].tolist() == [0, 2]
    with pytest.raises(UnknownLabelError, match=r"P9_2.*'TR9'"):
        transform({"tirads": "TR9", "tirads_readers": [], "case_id": "P9_2"})


def test_evaluator_exposes_every_task_and_the_references():
    generator = torch.Generator().manual_seed(0)
    batch = {
        keys.IMAGE: torch.rand(2, 1, 32, 32, generator=generator),
        keys.LABEL: torch.zeros(2, 1, 32, 32),
        keys.LABEL_TRUE: torch.ones(2, 1, 32, 32),
        keys.TIRADS: torch.tensor([0, 1]),
        keys.TIRADS_TRUE: torch.tensor([1, 1]),
        keys.SPACING: torch.tensor([[0.1, 0.2], [0.1, 0.2]]),
        "desc_shape": torch.tensor([1, -1]),
    }
    net = MultitaskUNet(num_classes=3, radiomics_dim=2, descriptor_heads=True)
    evaluator = MultitaskEvaluator(device=torch.device("cpu"), val_data_loader=[batch], network=net)
    evaluator.run()
    output = evaluator.state.output[1]
    assert output["pred_rad"].shape == (2,)
    assert output["pred_desc_foci"].shape == (4,)
    assert int(output["label_desc_shape"]) == -1
    assert output["label_desc_margin"] is None  # the batch has no margin labels
    assert int(output[keys.LABEL_CLS_TRUE]) == 1
    assert output[keys.SPACING].tolist() == pytest.approx([0.1, 0.2])
    assert output[keys.LABEL_TRUE].shape == (1, 32, 32)
