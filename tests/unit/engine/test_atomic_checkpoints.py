"""Checkpoint savers write whole files, keep the previous one until the next is in place, and
remember the best score across a resume."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from thyroid_monai.engine import AtomicCheckpointSaver
from thyroid_monai.engine.checkpoints import AtomicDiskSaver
from thyroid_monai.io.checkpoints import is_complete_checkpoint, load_checkpoint


class Unpicklable(torch.nn.Module):
    """A module whose state cannot be saved on the epoch named ``fail_at``."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.fail_at: int | None = None
        self.epoch = 0

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        if self.epoch == self.fail_at:
            return {"broken": lambda: None}
        return super().state_dict(*args, **kwargs)


def test_the_previous_checkpoint_stays_until_the_next_one_is_whole(tmp_path):
    model = Unpicklable()
    checkpoint = Checkpoint({"model": model}, AtomicDiskSaver(tmp_path), n_saved=1,
                            score_function=lambda engine: engine.state.epoch,
                            score_name="epoch")  # fmt: skip
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def train(engine):  # the weights change every epoch before the save
        model.epoch = engine.state.epoch
        model.weight.data.fill_(float(engine.state.epoch))

    engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    engine.run([0], max_epochs=2)
    assert [p.name for p in tmp_path.iterdir()] == ["model_epoch=2.pt"]

    model.fail_at = 3  # the save of epoch 3 fails half-way (a kill would stop it the same way)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever pickling raises
        engine.run([0], max_epochs=3)
    (kept,) = tmp_path.iterdir()
    assert kept.name == "model_epoch=2.pt"
    assert is_complete_checkpoint(kept)
    assert torch.equal(load_checkpoint(kept)["weight"], torch.full((2,), 2.0))


def score_engine(scores: list[float], saver: AtomicCheckpointSaver) -> Engine:
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def score(engine):
        engine.state.metrics["dice"] = scores[engine.state.epoch - 1]

    saver.attach(engine)
    return engine


def test_the_best_score_survives_a_resume(tmp_path):
    model = torch.nn.Linear(1, 1)

    def best_saver():
        return AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": model},
                                     save_key_metric=True, key_metric_name="dice",
                                     key_metric_filename="model.pt")  # fmt: skip

    first = best_saver()
    with torch.no_grad():
        model.weight.fill_(1.0)
    score_engine([0.8], first).run([0], max_epochs=1)
    memory = first.state_dict()
    assert memory  # the best score and its file

    resumed = best_saver()
    resumed.load_state_dict(memory)
    with torch.no_grad():
        model.weight.fill_(2.0)  # a worse model after the resume must not replace model.pt
    score_engine([0.8, 0.5], resumed).run([0], max_epochs=2)
    assert load_checkpoint(tmp_path / "model.pt")["weight"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]

    fresh = best_saver()  # without the memory, the worse model would have been saved
    score_engine([0.5], fresh).run([0], max_epochs=1)
    assert load_checkpoint(tmp_path / "model.pt")["weight"].item() == 2.0
