"""Single-tensor views of the multitask network and its traceable type-A shortcuts."""

from functools import partial

import pytest
import torch

from thyroid_monai.networks import (
    MaskAndLevel,
    MultitaskUNet,
    TaskOutput,
    ZeroPadShortcut,
    replace_untraceable_shortcuts,
)


@pytest.fixture
def network() -> MultitaskUNet:
    return MultitaskUNet(num_classes=3, embedding_dim=16).eval()


def test_task_output_selects_one_output(network: MultitaskUNet) -> None:
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        outputs = network(image)
        mask = TaskOutput(network, "seg")(image)
        level = TaskOutput(network, "cls", activation="softmax")(image)
    assert torch.equal(mask, outputs["seg"])
    torch.testing.assert_close(level, torch.softmax(outputs["cls"], dim=1))
    torch.testing.assert_close(level.sum(1), torch.ones(2))


def test_task_output_names_missing_outputs_and_bad_options(network: MultitaskUNet) -> None:
    with pytest.raises(KeyError, match="no 'rad' output"):
        TaskOutput(network, "rad")(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown activation"):
        TaskOutput(network, "cls", activation="sigmoid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing \\['cls'\\]"):
        MaskAndLevel(MultitaskUNet(num_classes=0))


def test_wrappers_share_the_wrapped_state_dict(network: MultitaskUNet) -> None:
    state = network.state_dict()
    wrapper = MaskAndLevel(MultitaskUNet(num_classes=3, embedding_dim=16))
    assert wrapper.state_dict().keys() == state.keys()
    wrapper.load_state_dict(state)
    assert all(torch.equal(wrapper.network.state_dict()[k], v) for k, v in state.items())


def test_traceable_shortcuts_keep_the_outputs_and_trace_generalises(
    network: MultitaskUNet,
) -> None:
    partials = [m for m in network.modules() if isinstance(getattr(m, "downsample", None), partial)]
    assert partials  # resnet18 uses type-A shortcuts
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        before = network(image)
        assert replace_untraceable_shortcuts(network) == len(partials)
        after = network(image)
    assert torch.equal(before["seg"], after["seg"])
    assert torch.equal(before["cls"], after["cls"])
    assert any(isinstance(m, ZeroPadShortcut) for m in network.modules())

    export = MaskAndLevel(network).eval()
    with torch.no_grad():
        traced = torch.jit.trace(export, torch.rand(1, 1, 32, 32))
        other = torch.rand(3, 1, 64, 32)  # not the traced example, nor its shape
        for eager, scripted in zip(export(other), traced(other), strict=True):
            torch.testing.assert_close(scripted, eager)


def test_a_folded_network_traces_and_the_trace_follows_the_input_size() -> None:
    network = MultitaskUNet(num_classes=3, embedding_dim=16, level_pooling="nodule",
                            space_to_depth=2).eval()  # fmt: skip
    replace_untraceable_shortcuts(network)
    export = MaskAndLevel(network).eval()
    with torch.no_grad():
        traced = torch.jit.trace(export, torch.rand(1, 1, 64, 64))
        other = torch.rand(2, 1, 128, 64)
        for eager, scripted in zip(export(other), traced(other), strict=True):
            torch.testing.assert_close(scripted, eager)
        assert export(other)[0].shape[-2:] == (128, 64)
