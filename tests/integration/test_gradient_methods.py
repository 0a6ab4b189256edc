"""Every gradient method on the phantom multitask model, and the bundle's tracked diagnostics."""

import math

import mlflow
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from data_prep.phantom import write_phantom_dataset
from thyroid_monai import keys
from thyroid_monai.engine import MultitaskTrainer
from thyroid_monai.io.checkpoints import load_checkpoint
from thyroid_monai.losses import MultitaskLoss
from thyroid_monai.mtl import GRADIENT_METHODS, GradientAggregator, build_gradient_method
from thyroid_monai.mtl.registry import method_options
from thyroid_monai.mtl.rlar import RLAR
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.synthetic import Phantom, PhantomConfig
from thyroid_monai.synthetic.render import RenderSettings
from thyroid_monai.tirads import get_grouping
from thyroid_monai.workflows import run_bundle, sqlite_uri, tracking_store

SIZE = 64
TINY = RenderSettings(height=SIZE, width=SIZE)


@pytest.fixture(scope="module")
def phantom_loader():
    grouping = get_grouping("risk3", "acr")
    items = []
    for case in Phantom(PhantomConfig(seed=3, render=TINY)).cases(8):
        image = torch.as_tensor(case.rendered.image, dtype=torch.float32)
        mask = torch.as_tensor(case.consensus, dtype=torch.float32)
        items.append({
            keys.IMAGE: (image / 255.0).T[None],  # (rows, cols) -> (1, x, y)
            keys.LABEL: mask.T[None],
            keys.TIRADS: torch.tensor(grouping.index(case.level)),
        })  # fmt: skip
    return DataLoader(Dataset(items), batch_size=4)


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_every_registered_method_trains_the_phantom_model_without_nan(name, phantom_loader):
    network = MultitaskUNet(num_classes=3)
    method = build_gradient_method(name, task_weights={"seg": 1.0, "cls": 1.0})
    params = [*network.parameters(), *method.extra_parameters()]
    before = [p.detach().clone() for p in params]
    trainer = MultitaskTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=phantom_loader,
        network=network,
        optimizer=torch.optim.AdamW(params, 1e-3),
        loss_function=MultitaskLoss(),
        gradient_method=method,
    )
    trainer.run()
    metrics = trainer.state.metrics
    assert math.isfinite(metrics["train_loss"])
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert {"train_weight_seg", "train_weight_cls"} <= set(metrics)
    if isinstance(method, GradientAggregator) and name not in ("sum", "uncertainty"):
        assert -1.0 <= metrics["train_grad_cos_seg_cls"] <= 1.0
        assert metrics["train_conflict"] in (0.0, 0.5, 1.0)
        assert all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_every_method_at_the_representation_trains_the_phantom_model(name, phantom_loader):
    # Nodule pooling: the level reads every encoder map, as the mask decoder does.
    network = MultitaskUNet(num_classes=3, level_pooling="nodule")
    options = {"measure_conflict": True} if name in ("sum", "uncertainty") else {}
    method = build_gradient_method(
        name, task_weights={"seg": 1.0, "cls": 1.0}, aggregate_at="representation", **options
    )
    encoder = list(network.representation_module().parameters())
    before = [p.detach().clone() for p in encoder]
    trainer = MultitaskTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=phantom_loader,
        network=network,
        optimizer=torch.optim.AdamW([*network.parameters(), *method.extra_parameters()], 1e-3),
        loss_function=MultitaskLoss(),
        gradient_method=method,
    )
    trainer.run()
    metrics = trainer.state.metrics
    assert math.isfinite(metrics["train_loss"])
    assert -1.0 <= metrics["train_grad_cos_seg_cls"] <= 1.0
    # the aggregated map gradient reached the encoder through the cut
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder, strict=True))
    assert all(torch.isfinite(p).all() for p in network.parameters())


def test_representation_level_refuses_rlar_on_every_encoder_map():
    network = MultitaskUNet(num_classes=3)
    with pytest.raises(ValueError, match="latent 'deepest' or 'pooled'"):
        MultitaskTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[],
            network=network,
            optimizer=torch.optim.AdamW(network.parameters(), 1e-3),
            loss_function=MultitaskLoss(),
            gradient_method=build_gradient_method("upgrad", aggregate_at="representation"),
            regulariser=RLAR(latent="encoder"),
        )


def test_bundle_tracks_gradient_diagnostics_and_checkpoints_learned_weights(tmp_path):
    data_dir = tmp_path / "data"
    write_phantom_dataset(data_dir, 16, PhantomConfig(seed=5, render=TINY), folds=2,
                          test_fraction=0.25, progress=False)  # fmt: skip
    common = {"image_size": [SIZE, SIZE], "batch_size": 4, "num_workers": 0, "max_epochs": 2}
    run_dir = tmp_path / "camegrad"
    run_bundle(["train.yaml", "mtl/camegrad.yaml"], run_dir=run_dir, dataset_dir=data_dir,
               quiet=True, overrides=common)  # fmt: skip

    client = mlflow.MlflowClient(sqlite_uri(tracking_store(run_dir)))
    experiment = client.get_experiment_by_name("thyroid_us_multitask")
    (run,) = client.search_runs([experiment.experiment_id])
    # The params describe the method that ran: its name and its options, nothing else.
    method_params = {k: v for k, v in run.data.params.items() if k.startswith("gradient_method")}
    assert method_params == {
        "gradient_method.name": "camegrad",
        **{f"gradient_method.{k}": str(v) for k, v in method_options("camegrad").items()},
    }
    for metric in ("train_grad_cos_seg_cls", "train_conflict", "train_grad_norm_seg",
                   "train_weight_cls", "train_combined_to_joint_norm"):  # fmt: skip
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "gradient_diagnostics.png" in artifacts
    figure = run_dir / "eval" / "gradient_diagnostics.png"
    assert figure.read_bytes().startswith(b"\x89PNG")

    run_dir = tmp_path / "uncertainty"
    workflow = run_bundle(["train.yaml", "mtl/uncertainty.yaml"], run_dir=run_dir,
                          dataset_dir=data_dir, tracking=False, quiet=True,
                          overrides={**common, "max_epochs": 1})  # fmt: skip
    method = workflow.parser.get_parsed_content("gradient_method")
    optimiser = workflow.parser.get_parsed_content("optimizer")
    assert any(p is method.log_variance for g in optimiser.param_groups for p in g["params"])
    assert not torch.equal(method.log_variance.detach(), torch.zeros(2))
    (checkpoint,) = (run_dir / "models").glob("checkpoint_*.pt")
    saved = load_checkpoint(checkpoint)  # weights only: no pickled objects in checkpoints
    assert torch.equal(saved["gradient_method"]["log_variance"], method.log_variance.detach())


def test_every_bundle_overlay_builds_its_method():
    from monai.bundle import ConfigParser

    from thyroid_monai.workflows import default_bundle_dir

    configs = default_bundle_dir() / "configs"
    overlays = sorted((configs / "mtl").glob("*.yaml"))
    assert len(overlays) >= 5
    for overlay in overlays:
        if "gradient_method" not in ConfigParser.load_config_file(str(overlay)):
            continue  # rlar.yaml: a regulariser on top of any method (test_bundle_layout.py)
        parser = ConfigParser()
        parser.read_config([str(configs / "train.yaml"), str(overlay)])
        method = parser.get_parsed_content("gradient_method")
        assert method.name in GRADIENT_METHODS, overlay.name
        assert overlay.stem.startswith(method.name), overlay.name
