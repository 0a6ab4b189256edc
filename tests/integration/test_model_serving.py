"""The registered champion served by MLflow's own model server answers a real HTTP request."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from integration_helpers import wait_for_http

from data_prep.phantom import write_phantom_dataset
from thyroid_monai.inference import InferenceSettings, InputImage, load_model, predict_report
from thyroid_monai.io.nifti import read_nifti_2d
from thyroid_monai.synthetic import PhantomConfig, RenderSettings
from thyroid_monai.tirads import get_grouping
from thyroid_monai.workflows import run_bundle, sqlite_uri

NAME = "thyroid_us_multitask"


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def stop(server: subprocess.Popen, port: int, timeout: float = 30) -> bool:
    """Terminates the server and its uvicorn worker (one process group); whether it let go of
    the port within ``timeout`` (the group is killed if not)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None and port_is_free(port):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    return False


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_mlflow_serves_the_champion_over_http(tmp_path, loopback_port):
    data = tmp_path / "data"
    config = PhantomConfig(seed=21, render=RenderSettings(height=64, width=80))
    write_phantom_dataset(data, 12, config, folds=2, test_fraction=0.2, progress=False)
    store = sqlite_uri(tmp_path / "team.db")
    run_dir = tmp_path / "run"
    run_bundle(["train.yaml"], run_dir=run_dir, dataset_dir=data, quiet=True,
               overrides={"max_epochs": 1, "image_size": [64, 64], "batch_size": 4,
                          "tracking_uri": store, "tracking_system_metrics": False})  # fmt: skip
    image, _ = read_nifti_2d(sorted((data / "images").glob("*.nii.gz"))[0])
    assert image.shape == (64, 80)  # not the network's square input: the pipeline resizes

    log = tmp_path / "serve.log"
    venv = Path(sys.executable).parent  # MLflow starts uvicorn from PATH, as in an active venv
    environment = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_DISABLE_TELEMETRY": "true",
                   "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    command = [str(venv / "mlflow"), "models", "serve",
               "-m", f"models:/{NAME}@champion", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(loopback_port)]  # fmt: skip
    with log.open("w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment,
                                  start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{loopback_port}"
    try:
        wait_for_http(f"{base}/ping", server, timeout=180, log=log)
        body = {"inputs": image[None].tolist(), "params": {"spacing_mm": [0.1, 0.12]}}
        answer = post_json(f"{base}/invocations", body)["predictions"]
    finally:
        stopped = stop(server, loopback_port)
    assert stopped  # a SIGTERM ended the server and freed its port: nothing is left running

    mask = np.asarray(answer["mask"])
    assert mask.shape == (1, 64, 80)
    assert set(np.unique(mask)) <= {0, 1}
    probabilities = np.asarray(answer["level_probabilities"])
    assert probabilities.shape == (1, 5)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    classes = get_grouping("acr5").class_names
    assert answer["level"] == [classes[int(np.argmax(probabilities[0]))]]
    report = json.loads(answer["report"][0])
    assert report["tirads"]["class"] == answer["level"][0]
    assert report["input"]["spacing_mm"] == [0.1, 0.12]
    assert report["nodule"]["detected"] == bool(mask.any())
    # the server's answer is the inference pipeline's for the run's best checkpoint (the mask
    # is the one the report describes: its largest region)
    local = InputImage(path=Path("same.png"), kind="png", image=image, spacing_mm=(0.1, 0.12),
                       spacing_source="request")  # fmt: skip
    expected, expected_mask, _ = predict_report(
        load_model(run_dir), local, name="image-0", relative_input=None, deidentified=False,
        settings=InferenceSettings(),
    )  # fmt: skip
    np.testing.assert_array_equal(mask[0], expected_mask)
    assert report["tirads"] == expected["tirads"]
    assert report["measurements"] == expected["measurements"]
