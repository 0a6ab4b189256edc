"""The merged bundle config as MLflow params.

:func:`config_params` turns the merged bundle config (the file MONAI writes for
``save_execute_config``) into MLflow params: one per leaf, keys and values made valid for any
MLflow server, expressions recorded as their values where that is cheap. :func:`param_key` and
:func:`param_value` make one key and one value valid.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import ID_SEP_KEY

logger = logging.getLogger(__name__)

PARAM_VALUE_LIMIT = 500
"""Longest param value logged. MLflow 3 accepts 6000 characters, servers before MLflow 2.3 only
500; the shorter limit keeps every server working, and the full text is in the config artifact."""
PARAM_KEY_LIMIT = 250
"""Longest param key MLflow accepts."""
TRUNCATION_MARK = "..."
_INVALID_KEY_CHARACTERS = re.compile(r"[^\w./ -]")
# The bundle's own control flow, not settings of the run.
DEFAULT_PARAM_EXCLUDE = ("imports", "initialize", "run", "finalize")


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
    text = _text(value)
    if len(text) > limit:
        text = text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def _text(value: Any) -> str:
    return str(value)


def _is_plain(value: Any) -> bool:
    """Whether a resolved value reads well as a param (numbers, text, and lists/dicts of them)."""
    if value is None or isinstance(value, bool | int | float | str | torch.device):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


class _CheapResolver:
    """Resolves config leaves whose references lead to no component (nothing is instantiated)."""

    def __init__(self, config: Mapping[str, Any]):
        self.parser = ConfigParser(copy.deepcopy(dict(config)))  # it expands macros in place
        self.parser.resolve_macro_and_relative_ids()
        if self.parser.get("imports") is not None:
            self.parser.get_parsed_content("imports")
        self._cheap: dict[str, bool] = {}

    def is_cheap(self, config_id: str) -> bool:
        """Whether ``config_id`` and everything it refers to is free of components."""
        if config_id not in self._cheap:
            self._cheap[config_id] = False  # a reference cycle is not cheap
            self._cheap[config_id] = self._check(self.parser.get(config_id))
        return self._cheap[config_id]

    def _check(self, value: Any) -> bool:
        if _is_component(value):
            return False
        if isinstance(value, dict):
            return all(self._check(v) for v in value.values())
        if isinstance(value, list):
            return all(self._check(v) for v in value)
        if isinstance(value, str):
            refs = ReferenceResolver.match_refs_pattern(value)
            return all(ref in self.parser and self.is_cheap(ref) for ref in refs)
        return True

    def resolve(self, config_id: str, limit: int) -> tuple[bool, Any]:
        """``(True, value)`` for a cheap leaf whose value is plain and fits ``limit``.

        Anything else gives ``(False, None)``: the caller records the text instead.
        """
        if not self.is_cheap(config_id):
            return False, None
        try:
            value = self.parser.get_parsed_content(config_id)
        except Exception as error:  # e.g. a file that only the training machine has
            logger.debug("config param %s kept as text: %s", config_id, error)
            return False, None
        if not _is_plain(value) or len(_text(value)) > limit:
            return False, None
        return True, value


def config_params(
    config_file: str | Path | None,
    *,
    exclude: Iterable[str] = DEFAULT_PARAM_EXCLUDE,
    resolve: bool = True,
    value_limit: int = PARAM_VALUE_LIMIT,
    separator: str = ".",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The merged bundle config as MLflow params, one per leaf.

    A value that is a reference (``@id``) or an expression (``$...``) is recorded as what it
    evaluates to when that is cheap: its references lead to no component (nothing would be
    instantiated), it evaluates without error, and the result is plain (numbers, text, lists of
    them) and fits ``value_limit``. Otherwise the expression's text is recorded, so
    ``network: @network_def`` stays ``@network_def``. Macros (``%id``) stay as text.

    Args:
        config_file: The merged config (JSON or YAML) that MONAI writes for
            ``save_execute_config``; ``None`` (not saved) gives only ``extra``.
        exclude: Top-level ids left out.
        resolve: Evaluate cheap references and expressions (else record every text as it is).
        value_limit: Longest value; longer ones are cut and end with ``...``.
        separator: Joins the levels of a config id into a param key.
        extra: Params added as they are (after the config's, winning on equal keys), e.g. the
            bundle's ``tracking_params`` with their resolved values.

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
    excluded = set(exclude)
    kept = {k: v for k, v in config.items() if k not in excluded}
    resolver = _CheapResolver(config) if resolve and config else None
    params: dict[str, str] = {}
    origin: dict[str, str] = {}
    for config_id, value in _leaves(kept, ""):
        key = param_key(config_id, separator)
        if key in origin:
            raise ValueError(f"config ids {origin[key]!r} and {config_id!r} both map to {key!r}")
        origin[key] = config_id
        is_text_to_resolve = isinstance(value, str) and value[:1] in ("@", "$")
        if resolver is not None and is_text_to_resolve:
            resolved, resolved_value = resolver.resolve(config_id, value_limit)
            value = resolved_value if resolved else value
        params[key] = param_value(value, value_limit)
    for key, value in (extra or {}).items():
        params[param_key(str(key), separator)] = param_value(value, value_limit)
    return params
