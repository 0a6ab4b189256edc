"""Single-tensor views of the multitask network, for MONAI's bundle tools and TorchScript.

:class:`~thyroid_monai.networks.MultitaskUNet` returns a dictionary of outputs (and its shared
latent), which suits training but not the tools that expect one tensor or a fixed tuple:

* ``python -m monai.bundle verify_net_in_out`` feeds a random image and reads ``output.shape[1]``,
  so it needs one tensor: :class:`TaskOutput` selects one task (the mask logits, or the level
  probabilities).
* ``python -m monai.bundle ckpt_export`` traces the network into TorchScript, whose outputs must be
  tensors or tuples of tensors: :class:`MaskAndLevel` returns ``(mask logits, level
  probabilities)``, in the order of ``network_data_format.outputs`` in the bundle's metadata.

Both wrap a network without parameters of their own and read and write the wrapped network's
state dictionary unchanged, so a checkpoint of the bundle's ``network_def`` (``models/model.pt``)
loads into them as it is.

Tracing trap: MONAI's ResNets with ``shortcut_type="A"`` (resnet10/18/34, FlexibleUNet's default
backbones) build the downsampling shortcut as ``torch.cat([out.data, zeros])``; ``.data`` hides
the tensor from ``torch.jit.trace``, which then stores the traced example's feature maps as
constants (the exported mask would be that of the example image). :class:`MaskAndLevel` replaces
those shortcuts by :class:`ZeroPadShortcut`, which computes the same values traceably.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from thyroid_monai import keys

Activation = Literal["none", "softmax"]


def level_probabilities(level_output: torch.Tensor) -> torch.Tensor:
    """Class probabilities from the network's ``cls`` output.

    A linear head gives logits and an ordinal head class log-probabilities; the softmax of either
    is the class probabilities (the softmax of normalised log-probabilities is their exponential).
    """
    return torch.softmax(level_output, dim=1)


class ZeroPadShortcut(nn.Module):
    """The type-A ResNet shortcut, traceable: strided subsampling, then zero channels appended.

    Same values as MONAI's ``ResNet._downsample_basic_block`` (an average pool of kernel 1 is a
    strided subsampling), without its ``.data``.

    Args:
        planes: Output channels.
        stride: Spatial stride.
        spatial_dims: 2 or 3.
    """

    def __init__(self, planes: int, stride: int, spatial_dims: int):
        super().__init__()
        self.planes, self.stride, self.spatial_dims = planes, stride, spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsamples ``x`` and pads its channels with zeros up to ``planes``."""
        index = (slice(None), slice(None)) + (slice(None, None, self.stride),) * self.spatial_dims
        out = x[index]
        zeros = out.new_zeros(out.shape[0], self.planes - out.shape[1], *out.shape[2:])
        return torch.cat([out, zeros], dim=1)


def replace_untraceable_shortcuts(network: nn.Module) -> int:
    """Swaps every type-A ResNet shortcut in ``network`` for a :class:`ZeroPadShortcut`.

    The forward values do not change; only ``torch.jit.trace`` (and autograd, which the ``.data``
    of the original cut off at these shortcuts) now sees through them.

    Returns:
        How many shortcuts were replaced.
    """
    replaced = 0
    for module in network.modules():
        shortcut = getattr(module, "downsample", None)
        if isinstance(shortcut, partial) and {"planes", "stride"} <= set(shortcut.keywords):
            module.downsample = ZeroPadShortcut(
                shortcut.keywords["planes"],
                shortcut.keywords["stride"],
                shortcut.keywords.get("spatial_dims", 3),
            )
            replaced += 1
    return replaced


class _Wrapper(nn.Module):
    """Holds the wrapped network; its state dictionary is the wrapped network's."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped network's state dictionary (no ``network.`` prefix)."""
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Loads a state dictionary of the wrapped network (a bundle checkpoint as it is)."""
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)


class TaskOutput(_Wrapper):
    """One task's output of a multitask network, as a single tensor.

    Args:
        network: Returns ``{task: tensor, ...}`` (a :class:`MultitaskUNet`).
        task: The output key (``"seg"``: mask logits; ``"cls"``: level output).
        activation: ``"none"`` (the raw output) or ``"softmax"`` over the channels (the level
            probabilities, as the bundle's metadata declares them).

    Raises:
        ValueError: For an unknown activation.
    """

    def __init__(self, network: nn.Module, task: str = keys.SEG, activation: Activation = "none"):
        if activation not in ("none", "softmax"):
            raise ValueError(f"unknown activation {activation!r}; use none or softmax")
        super().__init__(network)
        self.task = task
        self.activation = activation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The selected output for ``image`` ``(batch, channels, x, y)``.

        Raises:
            KeyError: If the network has no such output (names the outputs it has).
        """
        outputs = self.network(image)
        if self.task not in outputs:
            raise KeyError(f"the network has no {self.task!r} output; it has {sorted(outputs)}")
        output = outputs[self.task]
        return torch.softmax(output, dim=1) if self.activation == "softmax" else output

    def extra_repr(self) -> str:
        """The selected task and activation."""
        return f"task={self.task!r}, activation={self.activation!r}"


class MaskAndLevel(_Wrapper):
    """The deployable outputs of the multitask network: mask logits and level probabilities.

    Returns a tuple so that ``torch.jit.trace`` (``ckpt_export --use_trace True``) keeps both
    outputs; the order follows ``network_data_format.outputs`` of the bundle's metadata. The
    wrapped network's type-A ResNet shortcuts are made traceable
    (:func:`replace_untraceable_shortcuts`); its outputs stay the same.

    Args:
        network: A :class:`MultitaskUNet` with both the mask and the level task.

    Raises:
        ValueError: If the network lacks the mask or the level output.
    """

    def __init__(self, network: nn.Module):
        tasks = getattr(network, "tasks", (keys.SEG, keys.CLS))
        missing = [task for task in (keys.SEG, keys.CLS) if task not in tasks]
        if missing:
            raise ValueError(f"MaskAndLevel needs the mask and level tasks; missing {missing}")
        super().__init__(network)
        replace_untraceable_shortcuts(network)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask logits (batch, 2, x, y), level probabilities (batch, classes))``."""
        outputs = self.network(image)
        return outputs[keys.SEG], level_probabilities(outputs[keys.CLS])
