"""MLflow helpers that MONAI's handlers do not cover: figures of training diagnostics.

:class:`GradientDiagnosticsFigure` redraws the gradient-conflict curves (pairwise cosines,
gradient norms, effective task weights, share of conflicting steps) from the trainer's epoch
metrics at the end of every epoch. The bundle's tracking settings attach it and list the PNG among
the MLflow handler's artifacts, which are logged when training completes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ignite.engine import Engine, Events

from thyroid_monai.io.files import atomic_path
from thyroid_monai.mtl.diagnostics import CONFLICT, COSINE_PREFIX, NORM_PREFIX, WEIGHT_PREFIX

# (panel title, metric-name prefix after the epoch prefix, y-axis scale)
PANELS: tuple[tuple[str, str, str], ...] = (
    ("cosine between task gradients", COSINE_PREFIX, "linear"),
    ("gradient norm", NORM_PREFIX, "log"),
    ("effective task weight", WEIGHT_PREFIX, "linear"),
    ("share of conflicting steps", CONFLICT, "linear"),
)


class GradientDiagnosticsFigure:
    """Draws the per-epoch gradient diagnostics over training into one PNG.

    Args:
        path: Where the figure goes (rewritten atomically after every epoch).
        prefix: Prefix of the epoch metrics (``train_`` from ``EpochScalarMeans``).
        dpi: Resolution of the PNG.
    """

    def __init__(self, path: str | Path, prefix: str = "train_", dpi: int = 110):
        self.path = Path(path)
        self.prefix = prefix
        self.dpi = dpi
        self.history: dict[str, dict[int, float]] = {}

    def attach(self, engine: Engine) -> None:
        """Redraws at every epoch end."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Records this epoch's diagnostics and redraws the figure."""
        self.record(engine.state.epoch, engine.state.metrics)
        if self.history:
            self.draw()

    def record(self, epoch: int, metrics: Mapping[str, object]) -> None:
        """Keeps the diagnostics among ``metrics`` for ``epoch``."""
        for key, value in metrics.items():
            name = key.removeprefix(self.prefix)
            wanted = key.startswith(self.prefix) and self._panel(name) is not None
            if wanted and isinstance(value, int | float):
                self.history.setdefault(name, {})[epoch] = float(value)

    def _panel(self, name: str) -> int | None:
        for index, (_, prefix, _) in enumerate(PANELS):
            if name.startswith(prefix):
                return index
        return None

    def draw(self) -> Path:
        """Writes the figure; panels without data say so.

        Returns:
            The path of the PNG.
        """
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator

        figure, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
        for index, (title, prefix, scale) in enumerate(PANELS):
            axis = axes[index]
            series = {n: v for n, v in self.history.items() if self._panel(n) == index}
            if prefix == COSINE_PREFIX and len(series) == 2:  # one pair: its minimum is itself
                series.pop(f"{COSINE_PREFIX}min", None)
            for name, values in sorted(series.items()):
                epochs = sorted(values)
                label = name.removeprefix(prefix) or name
                axis.plot(epochs, [values[e] for e in epochs], marker="o", label=label)
            if not series:
                axis.text(0.5, 0.5, "not measured", ha="center", va="center",
                          transform=axis.transAxes)  # fmt: skip
            elif scale == "log" and all(v > 0 for s in series.values() for v in s.values()):
                axis.set_yscale("log")
            if prefix == COSINE_PREFIX:
                axis.axhline(0.0, color="grey", linewidth=0.8)
            if prefix == CONFLICT:
                axis.set_ylim(-0.05, 1.05)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_title(title)
            axis.set_xlabel("epoch")
            if len(series) > 1:
                axis.legend(fontsize="small")
        figure.tight_layout()
        with atomic_path(self.path) as temporary:
            figure.savefig(temporary, dpi=self.dpi)
        plt.close(figure)
        return self.path
