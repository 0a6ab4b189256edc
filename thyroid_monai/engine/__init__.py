"""Training and evaluation engines, subclasses of MONAI's trainer and evaluator."""

from thyroid_monai.engine.evaluator import MultitaskEvaluator
from thyroid_monai.engine.handlers import TrainingCheckpointSaver
from thyroid_monai.engine.metrics import LevelScore
from thyroid_monai.engine.prepare import MultitaskPrepareBatch
from thyroid_monai.engine.trainer import EpochScalarMeans, MultitaskTrainer

__all__ = [
    "EpochScalarMeans",
    "LevelScore",
    "MultitaskEvaluator",
    "MultitaskPrepareBatch",
    "MultitaskTrainer",
    "TrainingCheckpointSaver",
]
