"""Networks: the multitask U-Net and its single-tensor views.

The U-Net returns ``{"seg", "cls", "rad", "latent"}``; the views serve MONAI's bundle tools and
TorchScript export.
"""

from thyroid_monai.networks.export import (
    MaskAndLevel,
    TaskOutput,
    ZeroPadShortcut,
    level_probabilities,
    replace_untraceable_shortcuts,
)
from thyroid_monai.networks.multitask import MultitaskUNet

__all__ = [
    "MaskAndLevel",
    "MultitaskUNet",
    "TaskOutput",
    "ZeroPadShortcut",
    "level_probabilities",
    "replace_untraceable_shortcuts",
]
