"""The bundle in model-zoo layout, checked with MONAI's own bundle tools.

From the repository root, as a user runs them: ``verify_metadata`` against the vendored schema
with no network, ``run`` (1 short epoch on a 64x64 phantom), ``verify_net_in_out`` on the mask and
level views, ``ckpt_export`` to TorchScript (which must reproduce the eager mask and level), and
``multi_gpu_train.yaml`` under ``torchrun`` with two gloo processes on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

from data_prep.phantom import write_phantom_dataset
from thyroid_monai import keys
from thyroid_monai.cli import main
from thyroid_monai.io.checkpoints import RUN_CONFIG
from thyroid_monai.io.nifti import read_nifti_2d
from thyroid_monai.mtl import GRADIENT_METHODS
from thyroid_monai.mtl.rlar import RLAR
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.synthetic import PhantomConfig, RenderSettings

REPO = Path(__file__).resolve().parents[2]
BUNDLE = Path("bundles/thyroid_us_multitask")  # relative: the commands run from the repository root
CONFIGS = BUNDLE / "configs"
SCHEMA = BUNDLE / "schema" / "meta_schema_20240725.json"
SIZE = 64
# Overrides that change the network (three level classes): only the run's record knows them.
SHORT_RUN = ["--max_epochs", "1", "--image_size", f"[{SIZE},{SIZE}]", "--batch_size", "2",
             "--log_iterations", "False", "--label_grouping", "risk3"]  # fmt: skip


def bundle_command(*args: str, launcher: tuple[str, ...] = (sys.executable,)) -> str:
    """Runs ``python -m monai.bundle ARGS`` from the repository root; returns its output."""
    # A dead proxy: any attempt to download (schema, weights) fails instead of reaching out.
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    env.pop("no_proxy", None)
    result = subprocess.run([*launcher, "-m", "monai.bundle", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def config_list(*names: str | Path) -> str:
    return repr([str(name) for name in names])


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = tmp_path_factory.mktemp("phantom")
    config = PhantomConfig(seed=4, render=RenderSettings(height=SIZE, width=SIZE))
    write_phantom_dataset(dataset, 12, config, folds=3, test_fraction=0.34, progress=False)
    return dataset


@pytest.fixture(scope="module")
def trained_run(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short untracked epoch through ``python -m monai.bundle run``, with overrides."""
    run_dir = tmp_path_factory.mktemp("run")
    configs = config_list(CONFIGS / "train.yaml")
    bundle_command("run", "--config_file", configs, "--bundle_root", str(run_dir),
                   "--dataset_dir", str(phantom), *SHORT_RUN)  # fmt: skip
    return run_dir


def test_bundle_has_the_model_zoo_files() -> None:
    for name in ("LICENSE", "large_files.yml", "docs/README.md", "configs/metadata.json",
                 "configs/train.yaml", "configs/evaluate.yaml", "configs/multi_gpu_train.yaml",
                 "configs/logging.conf", "scripts/__init__.py"):  # fmt: skip
        assert (REPO / BUNDLE / name).is_file(), name
    assert "Apache License" in (REPO / BUNDLE / "LICENSE").read_text()
    metadata = json.loads((REPO / CONFIGS / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]
    outputs = metadata["network_data_format"]["outputs"]
    assert list(outputs) == ["pred", "tirads"]
    assert outputs["pred"]["format"] == "segmentation"
    assert outputs["tirads"]["type"] == "probabilities"


def test_metadata_verifies_against_the_vendored_schema_offline() -> None:
    md5 = hashlib.md5((REPO / SCHEMA).read_bytes()).hexdigest()
    assert md5 in (REPO / SCHEMA.parent / "README.md").read_text()  # the origin note is current
    output = bundle_command("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
                            "--filepath", str(SCHEMA), "--hash_val", md5)  # fmt: skip
    assert "skipped downloading" in output
    assert "metadata is verified with no error" in output


def test_metadata_that_breaks_the_schema_is_rejected(tmp_path: Path) -> None:
    metadata = json.loads((REPO / CONFIGS / "metadata.json").read_text())
    del metadata["network_data_format"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    from monai.bundle import verify_metadata

    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(broken), filepath=str(REPO / SCHEMA))


def test_network_views_match_the_declared_outputs() -> None:
    output = bundle_command("verify_net_in_out", "network_seg", "--meta_file",
                            str(CONFIGS / "metadata.json"), "--config_file",
                            str(CONFIGS / "train.yaml"), "--device", "cpu")  # fmt: skip
    assert "verified with no error" in output
    # verify_net_in_out checks the output named "pred"; the level view is checked against the
    # "tirads" entry by pointing "pred" at it.
    metadata = json.loads((REPO / CONFIGS / "metadata.json").read_text())
    tirads = metadata["network_data_format"]["outputs"]["tirads"]
    verify_net_in_out(
        net_id="network_level",
        meta_file=str(REPO / CONFIGS / "metadata.json"),
        config_file=str(REPO / CONFIGS / "train.yaml"),
        device="cpu",
        **{"_meta_#network_data_format#outputs#pred": tirads},
    )
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(net_id="network_level", meta_file=str(REPO / CONFIGS / "metadata.json"),
                          config_file=str(REPO / CONFIGS / "train.yaml"), device="cpu")  # fmt: skip


def test_training_from_the_repository_root_writes_the_model(trained_run: Path) -> None:
    assert (trained_run / "models" / "model.pt").is_file()
    assert (trained_run / "eval" / "validation_report.json").is_file()


def test_the_run_folder_alone_serves_infer_and_evaluate(
    trained_run: Path, phantom: Path, tmp_path: Path
) -> None:
    recorded = json.loads((trained_run / RUN_CONFIG).read_text())
    assert recorded["label_grouping"] == "risk3"  # the command-line override, recorded
    assert recorded["bundle_root"] == str(trained_run)
    assert not list((trained_run / "eval").glob("config_*.json"))  # untracked
    image = phantom / json.loads((phantom / "datalist.json").read_text())["testing"][0]["image"]
    assert main(["infer", "--model", str(trained_run), "--in", str(image),
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    report = json.loads(next((tmp_path / "out").glob("*/report.json")).read_text())
    assert set(report["tirads"]["probabilities"]) == {"TR1-3", "TR4", "TR5"}
    # Evaluation: the record and the overlay, no override repeated.
    bundle_command("run", "--config_file", config_list(trained_run / RUN_CONFIG,
                   CONFIGS / "evaluate.yaml"))  # fmt: skip
    assert (trained_run / "eval" / "metrics.csv").is_file()


def test_torchscript_export_reproduces_the_eager_mask_and_level(
    trained_run: Path, phantom: Path
) -> None:
    exported = trained_run / "models" / "model.ts"
    ckpt_export(
        net_id="network_export",
        filepath=str(exported),
        ckpt_file=str(trained_run / "models" / "model.pt"),
        meta_file=str(REPO / CONFIGS / "metadata.json"),
        config_file=str(trained_run / RUN_CONFIG),  # the export reads the run's record
        use_trace=True,
        input_shape=[1, 1, SIZE, SIZE],
    )
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == "0.3.0"

    parser = ConfigParser()
    parser.read_config(str(trained_run / RUN_CONFIG))
    parser["network_def#weights_path"] = str(trained_run / "models" / "model.pt")
    eager = parser.get_parsed_content("network_def")
    assert isinstance(eager, MultitaskUNet)
    eager.eval()

    items = json.loads((phantom / "datalist.json").read_text())["testing"]
    images = [read_nifti_2d(phantom / item[keys.IMAGE])[0] for item in items[:2]]
    real = torch.stack([torch.as_tensor(i.T[None] / 255.0, dtype=torch.float32) for i in images])
    larger = torch.rand(3, 1, 96, 128)  # another batch size and image size than the trace's
    for batch in (real, larger):
        with torch.no_grad():
            outputs = eager(batch)
            mask, level = scripted(batch)
        torch.testing.assert_close(mask, outputs[keys.SEG], atol=1e-4, rtol=1e-4)
        expected_level = torch.softmax(outputs[keys.CLS], dim=1)
        torch.testing.assert_close(level, expected_level, atol=1e-5, rtol=1e-4)
        assert torch.equal(mask.argmax(1), outputs[keys.SEG].argmax(1))
        assert torch.equal(level.argmax(1), expected_level.argmax(1))


@pytest.mark.parametrize("name", [*sorted(GRADIENT_METHODS), "rlar"])
def test_every_gradient_method_has_an_overlay_that_builds(name: str) -> None:
    overlay = REPO / CONFIGS / "mtl" / f"{name}.yaml"
    assert overlay.is_file(), f"no overlay for {name}"
    parser = ConfigParser()
    parser.read_config([str(REPO / CONFIGS / "train.yaml"), str(overlay)])
    method = parser.get_parsed_content("gradient_method")
    expected = GRADIENT_METHODS["sum" if name == "rlar" else name]
    assert type(method) is expected
    regulariser = parser.get_parsed_content("rlar")
    assert isinstance(regulariser, RLAR) == (name == "rlar")


def test_multi_gpu_config_trains_two_gloo_processes_to_equal_weights(
    phantom: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "ddp"
    # Each rank saves its final network state (model and BatchNorm statistics) after training.
    fingerprint = tmp_path / "rank_state.yaml"
    fingerprint.write_text(
        "+finalize:\n"
        '  - "$torch.save(@network.module.state_dict(), '
        "@bundle_root + '/rank' + os.environ['RANK'] + '.pt')\"\n"
    )
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", "2")  # fmt: skip
    configs = config_list(CONFIGS / "train.yaml", CONFIGS / "multi_gpu_train.yaml", fingerprint)
    bundle_command("run", "--config_file", configs, "--bundle_root", str(run_dir),
                   "--dataset_dir", str(phantom), *SHORT_RUN, launcher=torchrun)  # fmt: skip

    rank0 = torch.load(run_dir / "rank0.pt", weights_only=True)
    rank1 = torch.load(run_dir / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert any("running_mean" in name for name in rank0)
    different = [name for name in rank0 if not torch.equal(rank0[name], rank1[name])]
    assert not different, different
    best = torch.load(run_dir / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(best[name], rank0[name]) for name in rank0)  # rank 0 saved it
