"""Training and evaluation engines (subclasses of MONAI's trainer and evaluator) and metrics."""

from thyroid_monai.engine.checkpoints import (
    AtomicCheckpointSaver,
    TrainingCheckpointLoader,
    TrainingCheckpointSaver,
)
from thyroid_monai.engine.console import EpochSummary
from thyroid_monai.engine.distributed import BufferAveraging, is_not_rank0
from thyroid_monai.engine.evaluator import MultitaskEvaluator
from thyroid_monai.engine.metrics import LevelScore, MultitaskScores, key_metric
from thyroid_monai.engine.optimisation import adamw, warmup_cosine
from thyroid_monai.engine.prepare import MultitaskPrepareBatch
from thyroid_monai.engine.random_states import RandomStates
from thyroid_monai.engine.reports import EvaluationReportSaver
from thyroid_monai.engine.run_config import RunConfigSaver
from thyroid_monai.engine.trainer import EpochScalarMeans, MultitaskTrainer

__all__ = [
    "AtomicCheckpointSaver",
    "BufferAveraging",
    "EpochScalarMeans",
    "EpochSummary",
    "EvaluationReportSaver",
    "LevelScore",
    "MultitaskEvaluator",
    "MultitaskPrepareBatch",
    "MultitaskScores",
    "MultitaskTrainer",
    "RandomStates",
    "RunConfigSaver",
    "TrainingCheckpointLoader",
    "TrainingCheckpointSaver",
    "adamw",
    "is_not_rank0",
    "key_metric",
    "warmup_cosine",
]
