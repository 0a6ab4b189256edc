"""Loading datalists for training and evaluation (the items of a fold, or the held-out test set).

A datalist is a MONAI decathlon/Auto3DSeg-style JSON written by ``thyroid-monai synth`` or
``thyroid-monai prep``: a header, ``"training"`` items that carry a patient-level ``"fold"``, and
held-out ``"testing"`` items. File paths in items are relative to the datalist's folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from thyroid_monai import keys

PATH_KEYS = (keys.IMAGE, keys.LABEL, keys.LABEL_TRUE, keys.LABEL_READERS)
Split = Literal["train", "validate", "test", "all"]


def load_datalist(path: str | Path) -> dict[str, Any]:
    """Reads a datalist and checks its shape.

    Raises:
        FileNotFoundError: If the file does not exist (the message names it).
        ValueError: If it is not a datalist (names the file and what is wrong).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("training"), list):
        raise ValueError(f"{path}: a datalist needs a 'training' list of items")
    for index, item in enumerate(payload["training"] + payload.get("testing", [])):
        if not isinstance(item, dict) or keys.IMAGE not in item:
            raise ValueError(f"{path}: item {index} has no '{keys.IMAGE}' entry")
    return payload


def resolve_paths(item: Mapping[str, Any], base_dir: str | Path) -> dict[str, Any]:
    """Returns a copy of ``item`` with its file paths made absolute against ``base_dir``."""
    base = Path(base_dir)
    resolved = dict(item)
    for key in PATH_KEYS:
        value = item.get(key)
        if isinstance(value, str):
            resolved[key] = str(base / value)
        elif isinstance(value, list):
            resolved[key] = [str(base / v) for v in value]
    return resolved


def datalist_split(path: str | Path, split: Split, fold: int = 0) -> list[dict[str, Any]]:
    """The items of one split, with absolute paths.

    Args:
        path: The datalist JSON.
        split: ``"train"`` (training items outside ``fold``), ``"validate"`` (training items in
            ``fold``), ``"test"`` (the held-out items) or ``"all"`` (training and test).
        fold: Validation fold.

    Returns:
        Item dictionaries ready for a MONAI dataset.

    Raises:
        ValueError: For an unknown split, an item without a fold, or an empty split.
    """
    datalist = load_datalist(path)
    base = Path(path).parent
    training, testing = datalist["training"], datalist.get("testing", [])
    if split in ("train", "validate"):
        missing = [i for i, item in enumerate(training) if keys.FOLD not in item]
        if missing:
            raise ValueError(f"{path}: training items {missing[:5]} have no '{keys.FOLD}'")
        in_fold = split == "validate"
        items = [item for item in training if (item[keys.FOLD] == fold) == in_fold]
    elif split == "test":
        items = testing
    elif split == "all":
        items = training + testing
    else:
        raise ValueError(f"unknown split {split!r}; use train, validate, test or all")
    if not items:
        raise ValueError(f"{path}: the '{split}' split (fold {fold}) has no items")
    return [resolve_paths(item, base) for item in items]
