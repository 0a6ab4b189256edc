"""The one registry of gradient methods: a bundle selects a method by its name here."""

from __future__ import annotations

from typing import Any

from thyroid_monai.mtl.aggregators import IMTLG, MGDA, AlignedMTL, CAGrad, NashMTL, PCGrad, UPGrad
from thyroid_monai.mtl.base import GradientMethod, WeightedSum
from thyroid_monai.mtl.camegrad import CameGrad
from thyroid_monai.mtl.weighting import GradNorm, UncertaintyWeighting

GRADIENT_METHODS: dict[str, type[GradientMethod]] = {
    "sum": WeightedSum,
    "uncertainty": UncertaintyWeighting,
    "gradnorm": GradNorm,
    "camegrad": CameGrad,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "mgda": MGDA,
    "nash_mtl": NashMTL,
    "imtl_g": IMTLG,
    "aligned_mtl": AlignedMTL,
    "upgrad": UPGrad,
}


def build_gradient_method(name: str, **kwargs: Any) -> GradientMethod:
    """Instantiates a registered method by name.

    Args:
        name: A key of :data:`GRADIENT_METHODS`.
        **kwargs: The method's constructor arguments (``task_weights``, ``rho``...).

    Raises:
        KeyError: For an unknown name (the message lists the registered ones).
        ImportError: If the method needs the ``mtl`` extra and it is not installed.
    """
    try:
        method = GRADIENT_METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(GRADIENT_METHODS))
        raise KeyError(f"unknown gradient method {name!r}; registered: {valid}") from None
    return method(**kwargs)


def _check_registry() -> None:
    # The registry is written by hand, so a class registered under another name is a typo.
    wrong = {key: cls.name for key, cls in GRADIENT_METHODS.items() if cls.name != key}
    if wrong:
        raise RuntimeError(f"gradient methods registered under the wrong names: {wrong}")


_check_registry()
