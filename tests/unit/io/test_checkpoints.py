"""Checkpoint files: loaded without unpickling code unless trusted, written whole or not at all."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch

from thyroid_monai.io.checkpoints import (
    UntrustedCheckpointError,
    is_complete_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint_atomic,
)


def test_a_tensor_checkpoint_round_trips_without_a_full_unpickle(tmp_path):
    checkpoint = {"model": {"w": torch.arange(4.0)}, "epoch": 3}
    path = save_checkpoint_atomic(checkpoint, tmp_path / "c.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["epoch"] == 3
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_a_pickled_object_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"made": datetime.date(2024, 1, 2)}, path)
    with pytest.raises(UntrustedCheckpointError, match=r"model\.pt.*--trust-model"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True)["made"] == datetime.date(2024, 1, 2)


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone\.pt"):
        load_checkpoint(tmp_path / "gone.pt")


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    path = save_checkpoint_atomic({"epoch": 1}, tmp_path / "checkpoint_epoch=1.pt")
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever pickling raises
        save_checkpoint_atomic({"epoch": lambda: 2}, path)
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def write_epochs(folder: Path, epochs: list[int]) -> None:
    for epoch in epochs:
        path = folder / f"checkpoint_epoch={epoch}.pt"
        save_checkpoint_atomic({"epoch": torch.tensor(epoch)}, path)


def test_the_newest_complete_checkpoint_is_found(tmp_path):
    write_epochs(tmp_path, [2, 10, 9])
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"
    # a truncated newer file (a writer that was not atomic, killed mid-save) is skipped
    whole = (tmp_path / "checkpoint_epoch=10.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=11.pt").write_bytes(whole[: len(whole) // 2])
    assert not is_complete_checkpoint(tmp_path / "checkpoint_epoch=11.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"
    # temporaries of an interrupted atomic save and other files are not checkpoints
    (tmp_path / ".checkpoint_epoch=12.pt.x1.tmp.pt").write_bytes(b"partial")
    (tmp_path / "model.pt").write_bytes(whole)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=10.pt"


def test_resume_modes(tmp_path):
    assert resume_checkpoint(None, tmp_path) is None
    assert resume_checkpoint("auto", tmp_path / "no-such-folder") is None
    assert resume_checkpoint("auto", tmp_path) is None
    write_epochs(tmp_path, [1, 2])
    assert resume_checkpoint("auto", tmp_path) == tmp_path / "checkpoint_epoch=2.pt"
    explicit = tmp_path / "checkpoint_epoch=1.pt"
    assert resume_checkpoint(str(explicit), tmp_path) == explicit
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        resume_checkpoint(tmp_path / "nope.pt", tmp_path)
