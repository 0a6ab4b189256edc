"""The first step of every pipeline: keep only the sample fields the learned tasks use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.transforms import SelectItemsd

from thyroid_monai.transforms.readers import ReaderMode

if TYPE_CHECKING:
    from thyroid_monai.tasks import TaskSet


class SelectTaskItemsd(SelectItemsd):
    """``SelectItemsd`` with the keys of a task set (absent keys are skipped).

    Only these fields travel through the pipeline: lists of varying length (reader lists in
    consensus mode) cannot be collated.

    Args:
        tasks: The learned tasks.
        reader_mode: Training's reader mode (each reader's targets travel unless ``consensus``).
        references: Also keep what evaluation compares against (the phantom's truth, spacing);
            validation and evaluation use the consensus targets.
    """

    def __init__(
        self, tasks: TaskSet, reader_mode: ReaderMode = "consensus", references: bool = False
    ):
        wanted = tasks.evaluation_keys() if references else tasks.sample_keys(reader_mode)
        super().__init__(keys=wanted, allow_missing_keys=True)
