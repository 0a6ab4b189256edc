"""The evaluation report: the tables of :class:`~thyroid_monai.engine.metrics.MultitaskScores`.

:class:`EvaluationReportSaver` writes them as JSON and as Markdown (:func:`markdown_report`) after
every evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from thyroid_monai.engine.metrics import MultitaskScores
from thyroid_monai.io.files import atomic_path, write_json_atomic


class EvaluationReportSaver:
    """Writes the tables of a :class:`MultitaskScores` after every evaluation.

    ``<save_dir>/<name>.json`` holds the scores, the side-by-side comparison against the readers
    and the truth, the confusion matrices and the per-class tables; ``<name>.md`` shows them as
    Markdown tables. Both are written atomically.

    Args:
        scores: The metric instance the evaluator computes.
        save_dir: Output folder (created).
        name: File name without suffix.
    """

    def __init__(self, scores: MultitaskScores, save_dir: str | Path, name: str = "report"):
        self.scores = scores
        self.save_dir = Path(save_dir)
        self.name = name

    def attach(self, engine: Engine) -> None:
        """Writes after each evaluation epoch (the metrics are computed before this handler)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Writes the report of the evaluation that just finished."""
        report = self.scores.report
        if not report:
            raise RuntimeError("the scores hold no report: attach the metric to the evaluator")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.save_dir / f"{self.name}.json", report)
        with atomic_path(self.save_dir / f"{self.name}.md") as temporary:
            Path(temporary).write_text(markdown_report(report), encoding="utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_report(report: Mapping[str, Any]) -> str:
    """The side-by-side scores, confusion matrices and per-class tables as Markdown."""
    lines = ["# Evaluation", "", "| score | readers | truth |", "|---|---|---|"]
    lines += [
        f"| {row['score']} | {_cell(row['readers'])} | {_cell(row['truth'])} |"
        for row in report.get("side_by_side", [])
    ]
    for key, title in (("level", "readers' labels"), ("level_truth", "truth")):
        level = report.get(key)
        if not level:
            continue
        names = level["class_names"]
        lines += ["", f"## Level against the {title}", "", "Confusion matrix (rows: true, columns:"
                  " predicted)", "", "| | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]  # fmt: skip
        lines += [
            f"| {name} | " + " | ".join(str(v) for v in row) + " |"
            for name, row in zip(names, level["confusion_matrix"], strict=True)
        ]
        lines += ["", "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['class']} | {r['support']} | {_cell(r['precision'])} | {_cell(r['recall'])} "
            f"| {_cell(r['f1'])} |"
            for r in level["per_class"]
        ]
    return "\n".join(lines) + "\n"


__all__ = [
    "EvaluationReportSaver",
    "markdown_report",
]
