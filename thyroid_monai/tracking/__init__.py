"""Experiment tracking with MLflow: params, figures, the offline fallback, the model registry.

* :mod:`~thyroid_monai.tracking.params`: a run's components and settings as MLflow params.
* :mod:`~thyroid_monai.tracking.figures`: the gradient-diagnostics, confusion-matrix and
  sample-overlay figures a tracked run logs.
* :mod:`~thyroid_monai.tracking.offline`: the local store that holds the records while the
  tracking server is unreachable; :mod:`~thyroid_monai.tracking.sync` replays it onto the server.
* :mod:`~thyroid_monai.tracking.registry`: logging a trained model, registering it, promoting the
  champion, and completing a registration an outage postponed.
* :mod:`~thyroid_monai.tracking.handlers`: the bundle's MLflow handlers (resilient to outages; the
  trainer's one also registers the model).
* :mod:`~thyroid_monai.tracking.lineage`: a run's data as MLflow dataset inputs (digest of the
  datalist and its files), its tags and its description.
* :mod:`~thyroid_monai.tracking.served_model`: the registered pyfunc that ``mlflow models serve``
  serves (image in; mask, level probabilities and report out).
"""

from thyroid_monai.tracking.figures import (
    ConfusionMatrixFigure,
    GradientDiagnosticsFigure,
    SampleOverlayFigure,
)
from thyroid_monai.tracking.handlers import (
    RegisteringMLFlowHandler,
    ResilientMLFlowHandler,
    read_run_file,
    write_run_file,
)
from thyroid_monai.tracking.lineage import (
    DatalistLineage,
    RunRecord,
    datalist_lineage,
    dataset_input,
    git_commit,
)
from thyroid_monai.tracking.offline import (
    is_unreachable,
    local_store_uri,
    needs_sync,
    recorded_target,
    server_answers,
)
from thyroid_monai.tracking.params import (
    DEFAULT_PARAM_EXCLUDE,
    PARAM_KEY_LIMIT,
    PARAM_VALUE_LIMIT,
    config_params,
    param_key,
    param_value,
)
from thyroid_monai.tracking.registry import (
    CHAMPION_ALIAS,
    PENDING_FILE,
    REGISTRATION_FILE,
    ModelRegistration,
    Registration,
    best_model,
    example_input,
    register_model,
    register_pending,
    serving_example,
)
from thyroid_monai.tracking.served_model import UltrasoundModel, serving_signature
from thyroid_monai.tracking.sync import SyncReport, sync_offline_store

__all__ = [
    "CHAMPION_ALIAS",
    "DEFAULT_PARAM_EXCLUDE",
    "PARAM_KEY_LIMIT",
    "PARAM_VALUE_LIMIT",
    "PENDING_FILE",
    "REGISTRATION_FILE",
    "ConfusionMatrixFigure",
    "DatalistLineage",
    "GradientDiagnosticsFigure",
    "ModelRegistration",
    "RegisteringMLFlowHandler",
    "Registration",
    "ResilientMLFlowHandler",
    "RunRecord",
    "SampleOverlayFigure",
    "SyncReport",
    "UltrasoundModel",
    "best_model",
    "config_params",
    "datalist_lineage",
    "dataset_input",
    "example_input",
    "git_commit",
    "is_unreachable",
    "local_store_uri",
    "needs_sync",
    "param_key",
    "param_value",
    "read_run_file",
    "recorded_target",
    "register_model",
    "register_pending",
    "server_answers",
    "serving_example",
    "serving_signature",
    "sync_offline_store",
    "write_run_file",
]
