"""The one registry of gradient methods: a bundle selects a method by its name here."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from thyroid_monai.mtl.aggregators import IMTLG, MGDA, AlignedMTL, CAGrad, NashMTL, PCGrad, UPGrad
from thyroid_monai.mtl.base import GradientMethod, WeightedSum, option_names
from thyroid_monai.mtl.camegrad import CameGrad
from thyroid_monai.mtl.weighting import GradNorm, UncertaintyWeighting

if TYPE_CHECKING:
    from thyroid_monai.tasks import TaskSet

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


def build_gradient_method(
    name: str,
    tasks: TaskSet | None = None,
    task_weights: Mapping[str, float] | None = None,
    **options: Any,
) -> GradientMethod:
    """Instantiates a registered method by name: the one way a bundle or a script picks one.

    Args:
        name: A key of :data:`GRADIENT_METHODS`.
        tasks: The task set; the method is built for its learned tasks and their weights.
        task_weights: The weights, when no task set is given.
        **options: The method's own options (``rho`` for ``camegrad``...), checked against its
            constructor; what is not given keeps the method's default, written in its class.

    Raises:
        KeyError: For an unknown name (the message lists the registered ones).
        TypeError: For an option the method does not have (the message lists its options).
        ValueError: If both ``tasks`` and ``task_weights`` are given.
        ImportError: If the method needs the ``mtl`` extra and it is not installed.
    """
    try:
        method = GRADIENT_METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(GRADIENT_METHODS))
        raise KeyError(f"unknown gradient method {name!r}; registered: {valid}") from None
    if tasks is not None and task_weights is not None:
        raise ValueError("give the task set or the task weights, not both")
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"gradient method {name!r} has no option {', '.join(unknown)}; "
            f"its options: {', '.join(known) or 'none'}"
        )
    for option, value in options.items():
        _check_option_type(name, option, value, known[option])
    weights = tasks.active_weights if tasks is not None else task_weights
    return method(task_weights=weights, **options)


def _check_option_type(method: str, option: str, value: Any, default: Any) -> None:
    """Raises ``TypeError`` when ``value`` is not of the kind of the option's default.

    Numbers stay numbers (an int for a float option is fine, a bool is not a number here), text
    stays text, switches stay switches; an option whose default is None is not checked. The
    method's constructor checks the values themselves (ranges, choices).
    """
    if default is None or default is inspect.Parameter.empty:
        return
    if isinstance(default, bool):
        fits = isinstance(value, bool)
    elif isinstance(default, int | float):
        fits = isinstance(value, int | float) and not isinstance(value, bool)
        fits = fits and (isinstance(default, float) or isinstance(value, int))
    else:
        fits = isinstance(value, type(default))
    if not fits:
        raise TypeError(
            f"gradient method {method!r} option {option!r} takes a {type(default).__name__} "
            f"(default {default!r}), got {value!r}"
        )


def method_options(name: str) -> dict[str, Any]:
    """The options of a registered method and their defaults (written once, in its class)."""
    signature = inspect.signature(GRADIENT_METHODS[name]).parameters
    return {option: signature[option].default for option in option_names(GRADIENT_METHODS[name])}


def _check_registry() -> None:
    # The registry is written by hand, so a class registered under another name is a typo.
    wrong = {key: cls.name for key, cls in GRADIENT_METHODS.items() if cls.name != key}
    if wrong:
        raise RuntimeError(f"gradient methods registered under the wrong names: {wrong}")


_check_registry()
