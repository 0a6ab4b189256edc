"""``kill -9`` during training, then the same command again: it resumes from the last complete
checkpoint into the same MLflow run and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from data_prep.phantom import write_phantom_dataset
from thyroid_monai.io.checkpoints import load_checkpoint
from thyroid_monai.synthetic import PhantomConfig, RenderSettings
from thyroid_monai.tracking import read_run_file
from thyroid_monai.workflows import default_bundle_dir, sqlite_uri, tracking_store

EPOCHS = 3
TIMEOUT_S = 300


def train_command(run_dir: Path, data_dir: Path) -> list[str]:
    """The command a user types; the crashed run is started again with exactly this."""
    configs = default_bundle_dir() / "configs"
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(configs / "train.yaml"),
        "--meta_file", str(configs / "metadata.json"),
        "--tracking", str(configs / "tracking.yaml"),
        "--bundle_root", str(run_dir), "--dataset_dir", str(data_dir),
        "--max_epochs", str(EPOCHS), "--image_size", "[64,64]", "--batch_size", "4",
        "--backbone", "resnet10",  # the smallest: less to train and checkpoint
        "--num_workers", "0", "--log_iterations", "False", "--run_name", "crash-test",
        "--deterministic_algorithms", "True",
    ]  # fmt: skip


def environment() -> dict[str, str]:
    # One thread per process: the reference and the crashed run train side by side.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(run_dir: Path, data_dir: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(train_command(run_dir, data_dir), env=environment(),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip


def finish(process: subprocess.Popen, log: Path) -> None:
    code = process.wait(timeout=TIMEOUT_S)
    assert code == 0, log.read_text(errors="replace")[-3000:]


def only_run(run_dir: Path) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(sqlite_uri(tracking_store(run_dir)))
    experiment = client.get_experiment_by_name("thyroid_us_multitask")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def history(run_dir: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(sqlite_uri(tracking_store(run_dir)))
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def wait_for_first_checkpoint(run_dir: Path, process: subprocess.Popen, log: Path) -> None:
    """Waits until epoch 1 is checkpointed (its metrics are tracked before: the save comes last)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        if (run_dir / "models" / "checkpoint_epoch=1.pt").is_file():
            return
        time.sleep(0.05)
    pytest.fail("the first epoch was not checkpointed in time")


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = load_checkpoint(path)
    return checkpoint.get("model", checkpoint)


def test_kill_9_then_the_same_command_resumes_into_the_same_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = PhantomConfig(seed=5, render=RenderSettings(height=64, width=64))
    write_phantom_dataset(data, 12, config, folds=2, test_fraction=0.2, progress=False)
    straight_dir, crashed_dir = tmp_path / "straight", tmp_path / "crashed"

    straight = start(straight_dir, data, tmp_path / "straight.log")
    crashed = start(crashed_dir, data, tmp_path / "crashed.log")
    wait_for_first_checkpoint(crashed_dir, crashed, tmp_path / "crashed.log")
    crashed.send_signal(signal.SIGKILL)
    assert crashed.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    killed_after = sorted(p.name for p in (crashed_dir / "models").glob("checkpoint_epoch=*.pt"))
    assert killed_after, "killed before the first checkpoint"
    assert killed_after[-1] != f"checkpoint_epoch={EPOCHS}.pt", "killed after the last epoch"

    resumed = start(crashed_dir, data, tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log")
    finish(straight, tmp_path / "straight.log")
    assert f"Saved checkpoint at epoch: {EPOCHS}" in (tmp_path / "resumed.log").read_text()
    assert "Saved checkpoint at epoch: 1\n" not in (tmp_path / "resumed.log").read_text()

    for name in (f"checkpoint_epoch={EPOCHS}.pt", "model.pt"):
        expected = model_weights(straight_dir / "models" / name)
        actual = model_weights(crashed_dir / "models" / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{name}: {key} differs"

    run, reference = only_run(crashed_dir), only_run(straight_dir)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "crash-test"
    assert read_run_file(crashed_dir / "eval" / "mlflow_run.json")["run_id"] == run.info.run_id  # type: ignore[index]
    for key in ("train_loss", "train_loss_seg", "train_loss_cls", "val_mean_dice", "val_accuracy"):
        steps = history(crashed_dir, run.info.run_id, key)
        assert [step for step, _ in steps] == list(range(1, EPOCHS + 1)), key
        assert steps == history(straight_dir, reference.info.run_id, key), key
