"""The task set of a model: which targets it learns, and everything that follows from that.

One :class:`TaskSet` answers every question the training configuration used to answer with
expressions: the network's task arguments, the output keys, the sample fields the pipeline must
carry, the metric that selects the best checkpoint and the weights of the trained tasks. The
bundle builds it once from its ``use_*`` switches and hands it to the network, the gradient
method, the data pipeline and the tracking::

    tasks:
      _target_: thyroid_monai.tasks.TaskSet
      mask: "@use_mask"
      level: "@use_level"
      ...
    network_def:
      _target_: thyroid_monai.networks.MultitaskUNet.for_tasks
      tasks: "@tasks"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from thyroid_monai import descriptor_tasks, keys
from thyroid_monai.tirads import Scheme, get_grouping

LevelFrom = Literal["direct", "acr_points", "both"]
ReaderMode = Literal["consensus", "sample", "soft"]
Selection = Literal["auto", "mask", "level", "joint"]

DEFAULT_TASK_WEIGHTS: Mapping[str, float] = {
    keys.SEG: 1.0,
    keys.CLS: 1.0,
    # lambda_rad = 0.3 (docs/papers.md)
    keys.RAD: 0.3,
    # the five descriptor tasks together weigh as much as one level task
    **dict.fromkeys(descriptor_tasks.DESCRIPTOR_TASKS, 0.2),
}
"""Weight of each task in the joint objective ``sum_t w_t L_t``; the one place they are written."""

SELECTION_METRICS: Mapping[str, str] = {
    "mask": "val_mean_dice",
    "level": "val_macro_f1",
    "joint": "val_joint",
}
"""The validation score that selects the best checkpoint, per ``selection`` choice."""

REFERENCE_KEYS: tuple[str, ...] = (keys.LABEL_TRUE, keys.TIRADS_TRUE, keys.SPACING)
"""What evaluation compares against beside the readers: the phantom's truth, the pixel spacing."""


def check_level_route(level_from: str, *, level: bool, descriptors: bool) -> None:
    """Raises ``ValueError`` for an unknown level route or an ACR route without descriptors."""
    if level_from not in ("direct", "acr_points", "both"):
        raise ValueError(f"unknown level_from {level_from!r}; use direct, acr_points or both")
    if level and level_from != "direct" and not descriptors:
        raise ValueError(
            f"level_from {level_from!r} reads the ACR descriptor heads: enable the descriptor "
            "heads (use_descriptors true)"
        )


@dataclass(frozen=True)
class TaskSet:
    """The targets a model learns and how the level is produced.

    Args:
        mask: Learn the nodule mask.
        level: Learn the TI-RADS level.
        radiomics: Learn the radiomics target with the first embedding dimensions (needs the
            datalist header's ``"radiomics": {"features": [...]}``).
        descriptors: Learn the five ACR descriptor heads (structured report).
        level_from: ``"direct"`` (a level head), ``"acr_points"`` (the descriptor heads' ACR
            points; needs ``descriptors``) or ``"both"``.
        label_grouping: Named grouping of the level classes.
        tirads_scheme: Scheme the grouping belongs to.
        radiomics_dim: Length of the radiomics target (the datalist header's feature count,
            :func:`~thyroid_monai.transforms.radiomics_feature_count`); needed with ``radiomics``.
        weights: Task weights that differ from :data:`DEFAULT_TASK_WEIGHTS`.
        selection: What selects the best checkpoint: ``"mask"`` (Dice), ``"level"``
            (macro-F1), ``"joint"`` (their mean, ``val_joint``) or ``"auto"`` (the mask's Dice
            when the mask is learned, else the level's macro-F1: the behaviour before the
            option existed).

    Raises:
        ValueError: For no task, an unknown option, or an ACR route without descriptors.
    """

    mask: bool = True
    level: bool = True
    radiomics: bool = False
    descriptors: bool = False
    level_from: LevelFrom = "direct"
    label_grouping: str = "acr5"
    tirads_scheme: Scheme = "acr"
    radiomics_dim: int = 0
    weights: Mapping[str, float] | None = None
    selection: Selection = "auto"

    def __post_init__(self) -> None:
        switches = ("mask", "level", "radiomics", "descriptors")
        not_bool = [name for name in switches if not isinstance(getattr(self, name), bool)]
        if not_bool:
            raise TypeError(f"task switches must be true or false: {not_bool}")
        if not (self.mask or self.level):
            # every selection score is a mask or a level score
            raise ValueError("enable the mask or the level task (use_mask, use_level)")
        check_level_route(self.level_from, level=self.level, descriptors=self.descriptors)
        if self.selection not in ("auto", *SELECTION_METRICS):
            raise ValueError(f"unknown selection {self.selection!r}; use auto, mask, level, joint")
        needs = {"mask": self.mask, "level": self.level, "joint": self.mask and self.level}
        if not needs.get(self.selection, True):
            raise ValueError(f"selection {self.selection!r} needs a task this model does not learn")
        if self.radiomics and self.radiomics_dim <= 0:
            raise ValueError("the radiomics head needs radiomics_dim, the target's length")
        weights = dict(self.weights or {})
        unknown = set(weights) - set(DEFAULT_TASK_WEIGHTS)
        if unknown:
            raise ValueError(
                f"task weights for unknown tasks {sorted(unknown)}; "
                f"known: {sorted(DEFAULT_TASK_WEIGHTS)}"
            )
        invalid = {
            task: weight
            for task, weight in weights.items()
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0
        }
        if invalid:
            raise ValueError(f"task weights must be non-negative numbers, got {invalid}")
        get_grouping(self.label_grouping, self.tirads_scheme)  # an unknown grouping fails here

    @property
    def num_classes(self) -> int:
        """Level classes of the grouping, 0 when the level is not learned."""
        if not self.level:
            return 0
        return get_grouping(self.label_grouping, self.tirads_scheme).num_classes

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The network's task outputs, in the order of its output dictionary and of the losses."""
        switches = {keys.SEG: self.mask, keys.CLS: self.level, keys.RAD: self.radiomics}
        switches.update(dict.fromkeys(descriptor_tasks.DESCRIPTOR_TASKS, self.descriptors))
        return tuple(task for task, on in switches.items() if on)

    def network_arguments(self) -> dict[str, Any]:
        """The :class:`~thyroid_monai.networks.MultitaskUNet` arguments the tasks decide."""
        return {
            "num_classes": self.num_classes,
            "seg_classes": 2 if self.mask else 0,
            "radiomics_dim": self.radiomics_dim if self.radiomics else 0,
            "descriptor_heads": self.descriptors,
            "level_from": self.level_from,
            "label_grouping": self.label_grouping,
        }

    def sample_keys(self, reader_mode: ReaderMode = "consensus") -> list[str]:
        """The datalist fields training needs: targets, plus every reader's when readers are used.

        Only these travel through the pipeline: lists of varying length (reader lists in
        consensus mode) cannot be collated.
        """
        wanted = [keys.IMAGE, keys.LABEL, keys.TIRADS, "case_id"]
        wanted += [keys.RADIOMICS] if self.radiomics else []
        wanted += [keys.DESCRIPTORS] if self.descriptors else []
        if reader_mode != "consensus":
            wanted += [keys.LABEL_READERS, keys.TIRADS_READERS]
            wanted += [keys.DESCRIPTORS_READERS] if self.descriptors else []
        return wanted

    def evaluation_keys(self) -> list[str]:
        """The fields validation needs: consensus targets and the references of the scores."""
        return [*self.sample_keys("consensus"), *REFERENCE_KEYS]

    @property
    def selection_metric(self) -> str:
        """The validation score that selects the best checkpoint (higher is better)."""
        choice = self.selection
        if choice == "auto":
            choice = "mask" if self.mask else "level"
        return SELECTION_METRICS[choice]

    @property
    def active_weights(self) -> dict[str, float]:
        """``{task: weight}`` of the learned tasks, in the order the losses come.

        Methods with one learned weight per task (uncertainty, GradNorm) must be built for exactly
        the tasks whose losses they get.
        """
        weights = {**DEFAULT_TASK_WEIGHTS, **dict(self.weights or {})}
        return {task: float(weights[task]) for task in self.output_keys}

    def tracking_params(self) -> dict[str, Any]:
        """What a tracked run records about the tasks."""
        return {
            "learned": ",".join(self.output_keys),
            "num_classes": self.num_classes,
            "level_from": self.level_from if self.level else None,
            "label_grouping": self.label_grouping,
            "tirads_scheme": self.tirads_scheme,
            "selection_metric": self.selection_metric,
            **{f"weight_{task}": weight for task, weight in self.active_weights.items()},
        }
