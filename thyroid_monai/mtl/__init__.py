"""Multitask optimisation: gradient methods behind one interface and one registry."""

from thyroid_monai.mtl.base import (
    GRADIENT_METHODS,
    GradientMethod,
    WeightedSum,
    build_gradient_method,
)

__all__ = ["GRADIENT_METHODS", "GradientMethod", "WeightedSum", "build_gradient_method"]
