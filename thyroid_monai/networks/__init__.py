"""Networks: the multitask U-Net that returns ``{"seg", "cls", "rad", "latent"}``."""

from thyroid_monai.networks.multitask import MultitaskUNet

__all__ = ["MultitaskUNet"]
