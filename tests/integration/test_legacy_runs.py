"""Runs trained before the task set (bundle 0.2.0) still load their checkpoints, infer the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from thyroid_monai import keys
from thyroid_monai.inference import load_model
from thyroid_monai.workflows import default_bundle_dir

LEGACY_CONFIG = Path(__file__).resolve().parents[1] / "data" / "train_bundle_0.2.0.yaml"
SETTINGS = {"image_size": [64, 64], "backbone": "resnet10", "label_grouping": "risk3",
            "use_descriptors": True}  # fmt: skip


def parsed(config_file: Path, overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update({**SETTINGS, "dataset_dir": "/nowhere", **overrides})
    return parser


def test_a_0_2_0_run_loads_its_checkpoint_and_infers_like_todays_network(tmp_path: Path) -> None:
    # The run folder of a tracked 0.2.0 training: its merged config and its best checkpoint.
    legacy = parsed(LEGACY_CONFIG, {"level_from": "both", "level_pooling": "nodule"})
    (tmp_path / "eval").mkdir()
    legacy.export_config_file(legacy.get(), str(tmp_path / "eval" / "config_20261101_000000.json"))
    torch.manual_seed(0)
    trained = legacy.get_parsed_content("network_def")
    (tmp_path / "models").mkdir()
    torch.save(trained.state_dict(), tmp_path / "models" / "model.pt")

    model = load_model(tmp_path)  # today's code, the run's own config
    assert model.grouping is not None
    assert model.grouping.name == "risk3"
    assert tuple(model.image_size) == (64, 64)
    # Today's train.yaml with the same choices builds the same network: the checkpoint loads.
    current = parsed(default_bundle_dir() / "configs" / "train.yaml",
                     {"tasks#level_from": "both"}).get_parsed_content("network_def")  # fmt: skip
    current.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    image = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = trained.eval()(image)
        loaded = model.network.eval()(image)
        today = current.eval()(image)
    for task in (keys.SEG, keys.CLS, "desc_margin"):
        np.testing.assert_array_equal(loaded[task].numpy(), before[task].numpy())
        np.testing.assert_array_equal(today[task].numpy(), before[task].numpy())
