import pytest
import torch

from thyroid_monai import keys
from thyroid_monai.mtl import CameGrad, UncertaintyWeighting, build_gradient_method
from thyroid_monai.mtl.registry import GRADIENT_METHODS, method_options
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.tasks import DEFAULT_TASK_WEIGHTS, TaskSet


def test_the_task_set_decides_outputs_weights_keys_and_selection():
    tasks = TaskSet(radiomics=True, radiomics_dim=7, weights={"rad": 0.5})
    assert tasks.output_keys == (keys.SEG, keys.CLS, keys.RAD)
    assert tasks.active_weights == {"seg": 1.0, "cls": 1.0, "rad": 0.5}
    assert tasks.selection_metric == "val_mean_dice"
    assert keys.RADIOMICS in tasks.sample_keys()
    assert keys.TIRADS_READERS not in tasks.sample_keys()
    assert keys.TIRADS_READERS in tasks.sample_keys("sample")
    assert keys.LABEL_TRUE in tasks.evaluation_keys()
    level_only = TaskSet(mask=False, label_grouping="binary")
    assert level_only.selection_metric == "val_macro_f1"
    assert level_only.network_arguments()["seg_classes"] == 0
    assert level_only.network_arguments()["num_classes"] == 2
    assert TaskSet(selection="joint").selection_metric == "val_joint"
    described = TaskSet(descriptors=True).active_weights
    assert list(described)[2:] == [f"desc_{c}" for c in ("composition", "echogenicity", "shape",
                                                          "margin", "foci")]  # fmt: skip
    assert set(described.values()) == {1.0, DEFAULT_TASK_WEIGHTS["desc_margin"]}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mask": False, "level": False, "descriptors": True}, "mask or the level"),
        ({"mask": "no"}, "true or false"),
        ({"weights": {"cls": -1.0}}, "non-negative"),
        ({"weights": {"cls": "2"}}, "non-negative"),
        ({"level_from": "acr_points"}, "descriptors"),
        ({"radiomics": True}, "radiomics_dim"),
        ({"weights": {"size": 1.0}}, "unknown tasks"),
        ({"mask": False, "selection": "mask"}, "needs a task"),
        ({"label_grouping": "acr7"}, "acr7"),
    ],
)
def test_an_impossible_task_set_is_refused_with_the_reason(options, message):
    with pytest.raises((ValueError, KeyError, TypeError), match=message):
        TaskSet(**options)


def test_the_network_of_a_task_set_has_its_heads_and_refuses_a_repeated_decision():
    tasks = TaskSet(descriptors=True, level_from="both", label_grouping="risk3")
    network = MultitaskUNet.for_tasks(tasks, backbone="resnet10", embedding_dim=16)
    assert set(network.tasks) == set(tasks.output_keys)
    assert network(torch.rand(1, 1, 64, 64))[keys.CLS].shape == (1, 3)
    with pytest.raises(ValueError, match="num_classes"):
        MultitaskUNet.for_tasks(tasks, num_classes=5)


def test_a_gradient_method_is_chosen_by_name_with_its_own_options():
    tasks = TaskSet(descriptors=True)
    method = build_gradient_method("camegrad", tasks=tasks, rho=0.7)
    assert isinstance(method, CameGrad)
    assert method.options()["rho"] == 0.7
    assert method.options()["kappa"] == method_options("camegrad")["kappa"]
    assert method.task_weights == tasks.active_weights
    learned = build_gradient_method("uncertainty", tasks=tasks)
    assert isinstance(learned, UncertaintyWeighting)
    assert tuple(learned.tasks) == tasks.output_keys
    with pytest.raises(TypeError, match="has no option rho; its options: measure_conflict"):
        build_gradient_method("sum", tasks=tasks, rho=0.7)
    with pytest.raises(TypeError, match="option 'rho' takes a float"):
        build_gradient_method("camegrad", tasks=tasks, rho="0.7")
    with pytest.raises(TypeError, match="option 'measure_conflict' takes a bool"):
        build_gradient_method("sum", tasks=tasks, measure_conflict=1)
    assert build_gradient_method("camegrad", tasks=tasks, rho=1).options()["rho"] == 1
    with pytest.raises(ValueError, match="not both"):
        build_gradient_method("sum", tasks=tasks, task_weights={"seg": 1.0})


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_every_method_reports_the_options_it_runs_with(name):
    if GRADIENT_METHODS[name].__module__.endswith("aggregators"):
        pytest.importorskip("torchjd")
    method = build_gradient_method(name, tasks=TaskSet())
    assert method.options() == method_options(name)
