"""Shared test settings: fixed seeds, deterministic CPU algorithms, the ``slow`` marker, and the
PHI check for output folders made from DICOM inputs."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

# CI runs the property tests derandomised so that a run on a clean clone is reproducible;
# locally they keep exploring new examples (and remember failures in .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _fixed_seeds() -> None:
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - libraries under test may still use the global state
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test writes to a tracking server or the working directory's MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def assert_no_phi() -> Callable[..., object]:
    """A check for every output folder a test makes from DICOM inputs.

    ``assert_no_phi(folder, source)`` runs the PHI audit on ``folder`` (DICOM attributes and
    pixels, NIfTI headers) and searches every file under it, whatever its format (checkpoints,
    MLflow stores and artifacts, configs, logs), for the patient names, IDs and institutions of
    the DICOM files under ``source``; the test fails on any finding.
    """
    from data_prep.audit import audit_folder, source_identifiers

    def check(folder: Path, source: Path, code_artifacts: bool = False) -> object:
        identifiers = source_identifiers(source)
        assert identifiers, f"no identifying values found in the DICOM source {source}"
        report = audit_folder(folder, identifiers)
        assert report.searched_files > 0, f"nothing to audit in {folder}"
        problems = report.problems
        if code_artifacts:
            # A registered model ships this package's source (MLflow code_paths), which holds the
            # phantom's vocabulary of fake names the test identities are drawn from.
            problems = [p for p in problems if "/artifacts/code/thyroid_monai/" not in p]
        assert not problems, f"PHI in {folder}:\n" + "\n".join(problems)
        return report

    return check
