"""A readable console for interactive runs: one line per epoch that progress bars do not break."""

from __future__ import annotations

import time
from collections.abc import Sequence
from numbers import Real

from ignite.engine import Engine, Events
from tqdm import tqdm

# (metric name, column label); shown when the engine has the metric.
DEFAULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("val_mean_dice", "Dice"),
    ("val_macro_f1", "macro-F1"),
    ("val_qwk", "QWK"),
)


class EpochSummary:
    """Prints ``epoch 3/10  loss 1.71  Dice 0.747  macro-F1 0.057  QWK -0.20  (6 s)`` per epoch.

    The line goes through ``tqdm.write``, so a progress bar that is still on screen is cleared
    and redrawn below it instead of being cut in half.

    Args:
        evaluator: The validation engine whose metrics are shown (its last run); None shows the
            training loss only.
        columns: ``(metric, label)`` pairs to show from the evaluator's metrics.
    """

    def __init__(
        self,
        evaluator: Engine | None = None,
        columns: Sequence[tuple[str, str]] = DEFAULT_COLUMNS,
    ):
        self.evaluator = evaluator
        self.columns = tuple(columns)
        self._started = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        """Prints after each epoch, after the handlers attached before (validation)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._print)

    def _start(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def line(self, engine: Engine) -> str:
        """The summary of the epoch that ``engine`` just completed."""
        state = engine.state
        parts = [f"epoch {state.epoch:>{len(str(state.max_epochs))}}/{state.max_epochs}"]
        loss = state.metrics.get("train_loss")  # the epoch mean (EpochScalarMeans)
        if isinstance(loss, Real):
            parts.append(f"loss {float(loss):.3f}")
        metrics = self.evaluator.state.metrics if self.evaluator is not None else {}
        for name, label in self.columns:
            value = metrics.get(name)
            if isinstance(value, Real):
                parts.append(f"{label} {float(value):.3f}")
        parts.append(f"({time.perf_counter() - self._started:.0f} s)")
        return "  ".join(parts)

    def _print(self, engine: Engine) -> None:
        tqdm.write(f"      {self.line(engine)}")
