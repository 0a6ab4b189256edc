"""Logging a trained model to MLflow, registering it, and promoting the champion.

The model is logged with ``mlflow.pytorch`` in the ``pickle`` serialisation with this package as
code, so ``mlflow.pytorch.load_model`` returns the original ``nn.Module`` (MLflow 3's default
``pt2`` format would return a traced graph that fixes the batch size). Every logged model becomes
a new version of a registered model; the alias ``champion`` moves to the new version only when its
run beats the current champion's run on the validation key metric.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

CHAMPION_ALIAS = "champion"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Registration:
    """What happened when a model was registered.

    Attributes:
        name: Registered model name.
        version: The new version.
        model_uri: ``models:/<name>/<version>``.
        metric: The new run's key metric (``None`` if the run has none).
        promoted: Whether the alias now points at the new version.
        previous_champion: The version the alias pointed at before, if any.
        reason: One sentence explaining the decision.
    """

    name: str
    version: str
    model_uri: str
    metric: float | None
    promoted: bool
    previous_champion: str | None
    reason: str


@contextlib.contextmanager
def _tracking_uri(uri: str | None) -> Iterator[None]:
    """Points MLflow's fluent API at ``uri`` for the duration, then restores the previous URI."""
    previous = mlflow.get_tracking_uri()
    if uri is not None:
        mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _requirements() -> list[str]:
    """Pinned requirements of the logged model, stated rather than inferred.

    MLflow would otherwise infer them by importing the model in a subprocess, which takes seconds
    per model and records the local ``+cpu`` label of torch differently.
    """
    import monai

    torch_version = torch.__version__.split("+")[0]
    return [f"torch=={torch_version}", f"monai=={monai.__version__}", f"numpy=={np.__version__}"]


def _input_signature(example: np.ndarray) -> ModelSignature:
    # The batch dimension stays free; the output is a dictionary of tensors, which MLflow's tensor
    # schema cannot describe, so only the input is declared.
    shape = (-1, *example.shape[1:])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), shape, "image")]))


def _current_champion(
    client: mlflow.MlflowClient, name: str, alias: str
) -> mlflow.entities.model_registry.ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(error).lower():
            return None
        raise


def _is_better(new: float, old: float | None, greater_is_better: bool) -> bool:
    if old is None:
        return True
    return new > old if greater_is_better else new < old


def register_model(
    model: torch.nn.Module,
    *,
    run_id: str,
    registered_name: str,
    input_example: np.ndarray,
    key_metric: str,
    greater_is_better: bool = True,
    tracking_uri: str | None = None,
    alias: str = CHAMPION_ALIAS,
) -> Registration:
    """Logs ``model`` to the run, registers a new version and promotes it if it is better.

    Args:
        model: The trained network (in eval mode it is logged as it is).
        run_id: The MLflow run the model belongs to (its metrics decide the promotion).
        registered_name: Name in the model registry.
        input_example: A batch the model accepts, ``(batch, channels, x, y)`` float32.
        key_metric: Run metric that ranks versions (for example ``val_mean_dice``).
        greater_is_better: Direction of the key metric.
        tracking_uri: Tracking server or store; ``None`` uses MLflow's current URI.
        alias: The alias that marks the best version.

    Returns:
        The new version and whether the alias moved to it.
    """
    client = mlflow.MlflowClient(tracking_uri)
    metric = client.get_run(run_id).data.metrics.get(key_metric)
    with _tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            code_paths=[str(PACKAGE_DIR)],
            input_example=input_example.astype(np.float32),
            signature=_input_signature(input_example),
            registered_model_name=registered_name,
            pip_requirements=_requirements(),
        )
    version = str(info.registered_model_version)
    champion = _current_champion(client, registered_name, alias)
    previous = str(champion.version) if champion is not None else None
    if metric is None:
        promoted, reason = False, f"the run has no '{key_metric}' metric to compete with"
    else:
        champion_metric = (
            client.get_run(champion.run_id).data.metrics.get(key_metric)
            if champion is not None and champion.run_id
            else None
        )
        promoted = _is_better(metric, champion_metric, greater_is_better)
        if champion is None:
            reason = "there was no champion yet"
        elif promoted:
            reason = f"{key_metric} {metric:.4f} beats version {previous} ({champion_metric})"
        else:
            reason = (
                f"{key_metric} {metric:.4f} does not beat version {previous} ({champion_metric})"
            )
    client.set_model_version_tag(registered_name, version, key_metric, str(metric))
    if promoted:
        client.set_registered_model_alias(registered_name, alias, version)
    return Registration(
        name=registered_name,
        version=version,
        model_uri=f"models:/{registered_name}/{version}",
        metric=metric,
        promoted=promoted,
        previous_champion=previous,
        reason=reason,
    )
