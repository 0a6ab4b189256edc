"""A run's MLflow params: its components' own descriptions and the config's written settings.

:func:`config_params` asks the run's components (task set, gradient method, RLAR) what they run
with and adds every value written in the merged bundle config (the file MONAI writes for
``save_execute_config``), keys and values made valid for any MLflow server. :func:`param_key`
and :func:`param_value` make one key and one value valid.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from pydoc import locate
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import ID_SEP_KEY

PARAM_VALUE_LIMIT = 500
"""Longest param value logged. MLflow 3 accepts 6000 characters, servers before MLflow 2.3 only
500; the shorter limit keeps every server working, and the full text is in the config artifact."""
PARAM_KEY_LIMIT = 250
"""Longest param key MLflow accepts."""
TRUNCATION_MARK = "..."
_INVALID_KEY_CHARACTERS = re.compile(r"[^\w./ -]")
# The bundle's own control flow and metadata, not settings of the run.
DEFAULT_PARAM_EXCLUDE = ("imports", "initialize", "run", "finalize", "_meta_")


def _is_component(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def _leaves(config: Any, config_id: str) -> Iterator[tuple[str, Any]]:
    """``(config id, value)`` of every leaf; a list of plain values and an empty dict are one."""
    if isinstance(config, dict) and (config or not config_id):
        for key, value in config.items():
            yield from _leaves(value, f"{config_id}{ID_SEP_KEY}{key}" if config_id else str(key))
    elif isinstance(config, list) and any(isinstance(v, dict | list) for v in config):
        for index, value in enumerate(config):
            yield from _leaves(value, f"{config_id}{ID_SEP_KEY}{index}")
    else:
        yield config_id, config


def param_key(config_id: str, separator: str = ".") -> str:
    """An MLflow param key for a config id (``train::dataset::cache_rate`` -> ``train.dataset...``).

    Characters MLflow refuses in keys on some platforms (``:``, ``#``, ``$``...) become ``_``;
    a key longer than MLflow's limit keeps its end and gets a hash of the whole id, so keys stay
    unique.
    """
    key = separator.join(ReferenceResolver.split_id(config_id))
    key = _INVALID_KEY_CHARACTERS.sub("_", key)
    if len(key) > PARAM_KEY_LIMIT:
        import hashlib

        digest = hashlib.sha1(config_id.encode()).hexdigest()[:10]
        key = f"{digest}~{key[-(PARAM_KEY_LIMIT - len(digest) - 1) :]}"
    return key


def param_value(value: Any, limit: int = PARAM_VALUE_LIMIT) -> str:
    """The text MLflow stores, cut to ``limit``: ``str(value)``, as MONAI's handler logs params."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def _is_setting(value: Any) -> bool:
    """A value written in the config, not derived: no reference, expression or macro text."""
    if isinstance(value, str):
        return value[:1] not in ("@", "$", "%")
    if isinstance(value, list):
        return all(_is_setting(v) for v in value)
    return True


def component_params(name: str, component: Any) -> dict[str, Any]:
    """``{<name>.<option>: value}`` from a component's own ``tracking_params()``.

    A component that is off (``None``, e.g. RLAR without ``use_rlar``) is ``{name: "off"}``; a
    torch optimiser records its class and its defaults (learning rate, weight decay...).

    Raises:
        TypeError: If the component cannot describe itself.
    """
    if component is None:
        return {name: "off"}
    if isinstance(component, torch.optim.Optimizer):
        described = {"name": type(component).__name__, **component.defaults}
    elif hasattr(component, "tracking_params"):
        described = component.tracking_params()
    else:
        raise TypeError(f"{name}: {type(component).__name__} has no tracking_params()")
    return {f"{name}{ID_SEP_KEY}{option}": value for option, value in described.items()}


def signature_params(config_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The written values of a component's config and its class's defaults for the rest.

    For a component that cannot be referenced when the params are made (the trainer, whose
    handlers include the tracking handler itself): ``<config_id>.<argument>`` for every argument
    of its ``_target_`` that has a default and is not set by a reference or an expression.
    """
    section: Any = config
    for part in config_id.split(ID_SEP_KEY):
        section = section.get(part, {}) if isinstance(section, Mapping) else {}
    target = section.get("_target_") if isinstance(section, Mapping) else None
    located = locate(target) if isinstance(target, str) else None
    if not callable(located):
        return {}
    values: dict[str, Any] = {}
    for argument, parameter in inspect.signature(located).parameters.items():
        written = section.get(argument, parameter.default)
        if written is inspect.Parameter.empty or not _is_setting(written):
            continue
        values[f"{config_id}{ID_SEP_KEY}{argument}"] = written
    return values


def config_params(
    config_file: str | Path | None,
    *,
    components: Mapping[str, Any] | None = None,
    defaults_of: Iterable[str] = (),
    exclude: Iterable[str] = DEFAULT_PARAM_EXCLUDE,
    value_limit: int = PARAM_VALUE_LIMIT,
    separator: str = ".",
) -> dict[str, str]:
    """A run's MLflow params: its components as they describe themselves, and its settings.

    * every component named in ``components`` (the task set, the gradient method, RLAR) logs
      what it runs with (``gradient_method.name``, ``gradient_method.rho``...), through its
      ``tracking_params()``; the config subtree of that id is not logged, so a param never
      describes an option the run did not use;
    * every config id in ``defaults_of`` logs its written values and its class's defaults
      (:func:`signature_params`);
    * every other leaf of the merged config that is a written value (``image_size``,
      ``network_def.level_pooling``...) is one param; references, expressions and
      ``_target_`` names are left out: they derive from values logged elsewhere
      (``@batch_size``) or build objects.

    Args:
        config_file: The merged config (JSON or YAML) that MONAI writes for
            ``save_execute_config``; ``None`` (not saved) gives only the components.
        components: ``{config id: built component}``.
        defaults_of: Config ids whose class defaults are logged with their written values.
        exclude: Top-level ids left out.
        value_limit: Longest value; longer ones are cut and end with ``...``.
        separator: Joins the levels of a config id into a param key.

    Returns:
        ``{key: value}``, every key valid for MLflow and unique.

    Raises:
        FileNotFoundError: If ``config_file`` does not exist.
        ValueError: If two config ids map to the same key.
    """
    config = {}
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"merged config not found: {config_file}")
        config = ConfigParser.load_config_file(config_file)
    described = dict(components or {})
    left_out = set(exclude) | set(described)
    values = {
        config_id: value
        for config_id, value in _leaves({k: v for k, v in config.items() if k not in left_out}, "")
        if _is_setting(value) and not config_id.endswith(f"{ID_SEP_KEY}_target_")
    }
    for config_id in defaults_of:
        values.update(signature_params(config_id, config))
    for name, component in described.items():
        values.update(component_params(name, component))
    params: dict[str, str] = {}
    origin: dict[str, str] = {}
    for config_id, value in values.items():
        key = param_key(config_id, separator)
        if key in origin:
            raise ValueError(f"config ids {origin[key]!r} and {config_id!r} both map to {key!r}")
        origin[key] = config_id
        params[key] = param_value(value, value_limit)
    return params
