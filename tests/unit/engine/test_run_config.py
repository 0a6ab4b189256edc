import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from thyroid_monai.engine.run_config import (
    RENAMED_SETTINGS,
    RunConfigSaver,
    refuse_renamed_settings,
    without_tracking_patch,
    write_run_config,
)
from thyroid_monai.io.checkpoints import RUN_CONFIG


def saver_config(**settings):
    return {
        "bundle_root": "run",
        "dataset_dir": "data",
        "_meta_": {"version": "0.3.0"},
        "saver": {"_target_": "thyroid_monai.engine.RunConfigSaver", "path": "@bundle_root"},
        **settings,
    }


def test_the_saver_records_the_config_it_is_built_from_with_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = ConfigParser(saver_config(image_size=[64, 64]))
    parser.update({"image_size": [48, 32]})  # a command-line override
    saver = parser.get_parsed_content("saver")
    saver()
    record = json.loads((tmp_path / "run" / RUN_CONFIG).read_text())
    assert record["image_size"] == [48, 32]
    assert record["bundle_root"] == str(tmp_path / "run")  # absolute: usable from anywhere
    assert record["dataset_dir"] == str(tmp_path / "data")
    meta = json.loads((tmp_path / "run" / "configs" / "metadata.json").read_text())
    assert meta == {"version": "0.3.0"}


def test_renamed_settings_are_refused_with_their_new_place():
    parser = ConfigParser(saver_config(gradient_method_name="camegrad", rlar_tau=0.3))
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps what a component raises
        parser.get_parsed_content("saver")
    message = str(raised.value.__cause__)
    assert "gradient_method_name is now gradient_method#name" in message
    assert "rlar_tau is now rlar#tau" in message
    refuse_renamed_settings({"image_size": [64, 64]})  # nothing renamed: nothing raised
    assert RENAMED_SETTINGS["level_pooling"] == "network_def#level_pooling"


def test_outside_a_bundle_nothing_is_recorded(tmp_path):
    saver = RunConfigSaver(tmp_path)
    saver()
    assert not (tmp_path / RUN_CONFIG).exists()


def test_the_record_leaves_out_the_tracking_patch(tmp_path):
    config = {
        "save_execute_config": "$@output_dir + '/config_1.json'",
        "train": {"handlers": [{"_target_": "LrScheduleHandler"},
                               {"_target_": "thyroid_monai.tracking.RegisteringMLFlowHandler"}]},
        "validate": {"handlers": ["@validate#best_model_saver",
                                  {"_target_": "MLFlowHandler"}]},
    }  # fmt: skip
    record = without_tracking_patch(config)
    assert "save_execute_config" not in record
    assert record["train"]["handlers"] == [{"_target_": "LrScheduleHandler"}]
    assert record["validate"]["handlers"] == ["@validate#best_model_saver"]
    assert len(config["train"]["handlers"]) == 2  # the executing config is left as it is


def test_a_value_json_cannot_store_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError):
        write_run_config({"path": Path("x")}, tmp_path)
    assert not (tmp_path / RUN_CONFIG).exists()
