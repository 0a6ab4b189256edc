"""The step-cost benchmark runs end to end and covers every registered gradient method."""

import json

from integration_helpers import load_benchmark

from thyroid_monai.mtl import GRADIENT_METHODS


def test_every_registered_method_and_the_rlar_variants_are_timed_by_default():
    benchmark = load_benchmark("step_cost")
    names = benchmark.configurations(None)
    assert set(GRADIENT_METHODS) <= set(names)
    assert {"rlar", "rlar_every2", "rlar_detach_seg"} <= set(names)
    assert names["rlar_every2"] == ("sum", {"tau": -1.0, "every": 2})


def test_quick_run_writes_ratios_settings_and_machine(tmp_path):
    benchmark = load_benchmark("step_cost")
    out = tmp_path / "step_cost.json"
    benchmark.main(["--quick", "--methods", "rlar_every2", "--repeats", "1", "--warmup", "0",
                    "--threads", "1", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["ratios"]["sum"] == 1.0
    assert set(result["ratios"]) == {"sum", "rlar_every2"}
    assert result["ratios"]["rlar_every2"] > 0
    assert result["settings"]["image_size"] == [64, 64]
    assert result["machine"]["torch_threads"] == 1
    assert result["rlar_breakdown_seconds"]["final_backward_with_second_order"] > 0
    assert result["errors"] == {}


def test_floors_and_representation_level_methods_are_timed_with_their_phases(tmp_path):
    benchmark = load_benchmark("step_cost")
    names = benchmark.configurations(None)
    assert {"floor", "floor_representation", "floor_batched", "camegrad_representation"} <= set(
        names
    )
    assert "sum_representation" not in names  # the plain sum takes no task gradients
    out = tmp_path / "step_cost.json"
    benchmark.main(["--quick", "--methods", "camegrad", "camegrad_representation", "floor",
                    "floor_representation", "--repeats", "1", "--warmup", "0", "--threads", "1",
                    "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["floor_ratios"]) == {"camegrad", "camegrad_representation"}
    camegrad = result["breakdown_seconds"]["camegrad"]
    assert {"task_gradients", "aggregation", "write", "rest_of_step"} <= set(camegrad)
    assert "representation_backward" in result["breakdown_seconds"]["camegrad_representation"]
    assert "backward" in result["breakdown_seconds"]["sum"]
    # the map gradients are far smaller than the encoder's parameter gradients
    sizes = result["task_gradient_mb"]
    assert sizes["floor_representation"] < sizes["floor"]
    assert "camegrad_at_most_1.25x_sum" in result["targets"]
    assert result["errors"] == {}


def test_settling_steps_are_neither_timed_nor_counted(tmp_path):
    benchmark = load_benchmark("step_cost")
    out = tmp_path / "step_cost.json"
    benchmark.main(["--quick", "--methods", "rlar_every2", "--repeats", "2", "--warmup", "0",
                    "--settle", "1", "--threads", "1", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["settings"]["settle"] == 1
    # each timed block is 2 consecutive steps, one with the penalty; the settling step between
    # blocks shifts which one, but is not counted
    assert result["active_step_share"]["rlar_every2"] == 0.5


def test_cpu_memory_benchmark_compares_both_allocator_settings(tmp_path):
    benchmark = load_benchmark("cpu_memory")
    out = tmp_path / "cpu_memory.json"
    benchmark.main(["--quick", "--methods", "floor", "--rounds", "1", "--repeats", "1",
                    "--threads", "1", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["median_step_seconds"]) == {"system", "keep"}
    assert set(result["keep_over_system"]) == {"sum", "floor"}
    assert all(ratio > 0 for ratio in result["keep_over_system"].values())
    assert result["ratio_to_sum"]["keep"]["sum"] == 1.0
