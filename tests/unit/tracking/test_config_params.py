"""The merged bundle config as MLflow params: flattening, resolving, MLflow's rules."""

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


def test_every_leaf_becomes_a_param_with_cheap_expressions_resolved():
    params = config_params(write_config(MERGED))
    assert params["image_size"] == "[64, 64]"  # a list of plain values is one param
    assert params["learning_rate"] == "0.001"
    assert params["scale"] == "31.622776601683793"  # an expression over plain values: its value
    assert params["network_def.in_features"] == "64"  # a reference inside a component
    assert params["network_def._target_"] == "torch.nn.Linear"
    assert params["loss.weight"] == "None"  # a reference to None is resolved too
    assert params["network"] == "$@network_def.to('cpu')"  # refers to a component: kept as text
    assert params["transforms.0.keys"] == "['image']"  # lists of components are indexed
    assert params["transforms.1._target_"] == "Identity"
    assert params["validate.transforms"] == "%transforms"  # macros stay text
    assert params["missing"] == "$open('/no/such/file').read()"  # fails to evaluate: text
    assert "run" not in params
    assert "imports" not in params


def test_nothing_is_instantiated_while_resolving():
    config = dict(MERGED, probe="$@network_def.out_features")  # would need the Linear
    params = config_params(write_config(config))
    assert params["probe"] == "$@network_def.out_features"


def test_resolving_can_be_switched_off_and_extras_win():
    extra = {"learning_rate": 0.5, "gradient_method": "WeightedSum()"}
    params = config_params(write_config(MERGED), resolve=False, extra=extra)
    assert params["scale"] == "$math.sqrt(@learning_rate * 1e6)"
    assert params["learning_rate"] == "0.5"
    assert params["gradient_method"] == "WeightedSum()"


def test_values_are_cut_to_the_limit_and_long_results_keep_their_expression():
    config = {"notes": "x" * 900, "many": "$list(range(400))", "few": "$list(range(3))"}
    params = config_params(write_config(config), value_limit=500)
    assert len(params["notes"]) == 500
    assert params["notes"].endswith("...")
    assert params["many"] == "$list(range(400))"  # the value would not fit: the text is clearer
    assert params["few"] == "[0, 1, 2]"


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
    assert config_params(None, extra={"a": 1}) == {"a": "1"}


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
