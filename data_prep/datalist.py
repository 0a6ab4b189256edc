"""Writing MONAI datalist JSON (reading it is :mod:`thyroid_monai.data`, used at training time).

The layout follows MONAI's decathlon and Auto3DSeg datalists: a header describing the dataset,
``"training"`` items with a ``"fold"`` number, and optional held-out ``"testing"`` items. File paths
inside items are relative to the datalist's folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thyroid_monai.io.files import write_json_atomic


def write_datalist(
    path: str | Path,
    header: Mapping[str, Any],
    training: Sequence[Mapping[str, Any]],
    testing: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Writes a datalist atomically.

    Args:
        path: Destination JSON.
        header: Dataset-level fields (name, description, label scheme, generator settings...).
        training: Items available for training and validation, each with a ``"fold"``.
        testing: Held-out items.

    Returns:
        The path written.
    """
    payload = dict(header)
    payload["numTraining"] = len(training)
    payload["numTest"] = len(testing)
    payload["training"] = list(training)
    payload["testing"] = list(testing)
    return write_json_atomic(path, payload)
