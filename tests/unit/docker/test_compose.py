"""Invariants of the team deployment (the Dockerfiles themselves are linted by hadolint)."""

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[3] / "docker"


def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_tracking_server_is_bound_to_localhost_unless_configured():
    ports = compose()["services"]["mlflow"]["ports"]
    assert ports == ["${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"]


def test_server_uses_postgres_and_an_artifact_volume():
    services = compose()["services"]
    command = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg2://" in command
    assert "--artifacts-destination=/mlartifacts" in command
    assert "mlflow-artifacts:/mlartifacts" in services["mlflow"]["volumes"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_trainer_runs_the_bundle_against_the_server():
    trainer = compose()["services"]["trainer"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "monai.bundle run" in trainer["command"][-1]
    assert trainer["build"]["dockerfile"] == "docker/Dockerfile"


def test_images_run_as_a_non_root_user():
    for name in ("Dockerfile", "mlflow.Dockerfile"):
        lines = (DOCKER / name).read_text().splitlines()
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users, name
        assert users[-1] not in ("0", "root"), name
