"""A run's MLflow params: components describe themselves, written settings, MLflow's rules."""

import json
import logging

import mlflow
import pytest
from ignite.engine import Engine

from thyroid_monai.tracking import (
    PARAM_KEY_LIMIT,
    ResilientMLFlowHandler,
    config_params,
    param_key,
    param_value,
)


def write_config(config):
    with open("merged.json", "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return "merged.json"


MERGED = {
    "imports": ["$import math"],
    "image_size": [64, 64],
    "learning_rate": 0.001,
    "class_weights": None,
    "scale": "$math.sqrt(@learning_rate * 1e6)",
    "network_def": {"_target_": "torch.nn.Linear", "in_features": "@image_size#0",
                    "out_features": 2},
    "network": "$@network_def.to('cpu')",
    "loss": {"_target_": "torch.nn.MSELoss", "weight": "@class_weights"},
    "transforms": [{"_target_": "Identityd", "keys": ["image"]}, {"_target_": "Identity"}],
    "validate": {"transforms": "%transforms", "size": "@::image_size"},
    "missing": "$open('/no/such/file').read()",
    "run": ["$@network.train()"],
}  # fmt: skip


def test_written_values_become_params_and_derived_ones_are_left_out():
    params = config_params(write_config(MERGED))
    assert params["image_size"] == "[64, 64]"  # a list of plain values is one param
    assert params["learning_rate"] == "0.001"
    assert params["class_weights"] == "None"
    assert params["network_def.out_features"] == "2"
    assert params["transforms.0.keys"] == "['image']"  # lists of components are indexed
    assert not [key for key in params if key.endswith("_target_")]  # builds, not settings
    # references, expressions and macros derive from what is logged, or build objects
    for derived in ("scale", "network_def.in_features", "network", "loss.weight",
                    "validate.transforms", "validate.size", "missing"):  # fmt: skip
        assert derived not in params
    assert "run" not in params
    assert "imports" not in params


class Method:
    def tracking_params(self):
        return {"name": "camegrad", "rho": 0.5}


def test_components_describe_themselves_instead_of_their_config():
    config = dict(MERGED, gradient_method={"_target_": "x.build", "name": "sum", "rho": 0.7},
                  rlar={"_target_": "x.optional_rlar", "enabled": False})  # fmt: skip
    components = {"gradient_method": Method(), "rlar": None}
    params = config_params(write_config(config), components=components)
    assert params["gradient_method.name"] == "camegrad"  # what ran, not what a file said
    assert params["gradient_method.rho"] == "0.5"
    assert "gradient_method._target_" not in params
    assert params["rlar"] == "off"
    assert "rlar.enabled" not in params
    with pytest.raises(TypeError, match="tracking_params"):
        config_params(write_config(config), components={"loss": object()})


def test_values_are_cut_to_the_limit():
    params = config_params(write_config({"notes": "x" * 900}), value_limit=500)
    assert len(params["notes"]) == 500
    assert params["notes"].endswith("...")


def test_keys_follow_mlflow_rules_and_stay_unique():
    assert param_key("train::handlers::0::_target_") == "train.handlers.0._target_"
    assert param_key("train#dataset#cache_rate") == "train.dataset.cache_rate"
    assert param_key("odd$key(1)") == "odd_key_1_"
    long_a, long_b = "a" * 300 + "::x", "b" * 300 + "::x"
    assert len(param_key(long_a)) <= PARAM_KEY_LIMIT
    assert param_key(long_a) != param_key(long_b)
    with pytest.raises(ValueError, match="both map to"):
        config_params(write_config({"odd$": 1, "odd_": 2}))


def test_values_as_mlflow_stores_them():
    assert param_value(True) == "True"
    assert param_value({"seg": 1.0}) == "{'seg': 1.0}"
    assert param_value("y" * 20, limit=10) == "yyyyyyy..."


def test_missing_config_file_is_named():
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        config_params("nowhere.json")
    assert config_params(None, components={"m": Method()}) == {"m.name": "camegrad", "m.rho": "0.5"}


def test_handler_logs_hundreds_of_params_and_keeps_first_values_on_a_second_start(caplog):
    params = {f"p{i}": i for i in range(250)}  # MLflow takes at most 100 per batch
    uri = "sqlite:///params.db"

    def start(values):
        handler = ResilientMLFlowHandler(fallback_dir="offline", tracking_uri=uri,
                                         experiment_name="params", run_name="r",
                                         experiment_param=values)  # fmt: skip
        engine = Engine(lambda engine, batch: None)
        handler.start(engine)
        return handler

    first = start(params)
    with caplog.at_level(logging.WARNING):
        start({**params, "p0": "changed", "new": "x"})  # continues the same (running) run
    assert "p0" in caplog.text
    run = mlflow.MlflowClient(uri).get_run(first.cur_run.info.run_id)
    assert len(run.data.params) >= 251
    assert run.data.params["p0"] == "0"
    assert run.data.params["p249"] == "249"
    assert run.data.params["new"] == "x"


def test_class_defaults_of_a_component_that_cannot_be_referenced():
    config = {"trainer": {"_target_": "thyroid_monai.engine.MultitaskTrainer", "max_epochs": 3,
                          "network": "@net", "level_guide_epochs": 2}}  # fmt: skip
    params = config_params(write_config(config), defaults_of=["trainer"])
    assert params["trainer.level_guide_epochs"] == "2"  # written
    assert "trainer.network" not in params  # a reference
    config["trainer"].pop("level_guide_epochs")
    params = config_params(write_config(config), defaults_of=["trainer"])
    assert params["trainer.level_guide_epochs"] == "4"  # the class default


def test_an_optimiser_records_its_class_and_defaults():
    import torch

    optimiser = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    params = config_params(None, components={"optimizer": optimiser})
    assert params["optimizer.name"] == "AdamW"
    assert params["optimizer.lr"] == "0.01"
    assert params["optimizer.weight_decay"] == "0.01"
