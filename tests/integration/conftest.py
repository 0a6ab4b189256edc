"""Real servers for integration tests: PostgreSQL and an MLflow tracking server on loopback.

The servers are started from the Debian binaries (``apt-get install postgresql``; ``.ci/run``
installs them) and stopped when the test module ends. Without the binaries the tests that need
them are skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_helpers import wait_for_http


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_bin() -> Path | None:
    """Folder of the newest installed PostgreSQL server binaries, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; under root (CI) drop to the "postgres" account.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port, with a database ``mlflow``."""
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL")
    # A folder the postgres account can enter (pytest's tmp folders are private to the user).
    base = Path(tempfile.mkdtemp(prefix="thyroid-pg-", dir="/tmp"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group="postgres")
    data, port = base / "data", free_port()

    def run(*command: str) -> None:
        binary = str(binaries / command[0])
        subprocess.run(
            _as_postgres_user([binary, *command[1:]]), check=True, capture_output=True, text=True
        )

    run("initdb", "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8")
    run(
        "pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w", "start",
        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
    )  # fmt: skip
    try:
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` as a child process that a test can stop and start again on its port."""

    def __init__(self, backend_store_uri: str, folder: Path, port: int | None = None):
        self.backend_store_uri = backend_store_uri
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> MlflowServer:
        log = self.folder / "server.log"
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        environment.pop("MLFLOW_TRACKING_URI", None)
        with log.open("a") as sink:
            self.process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=environment
            )
        wait_for_http(f"{self.uri}/health", self.process, timeout=timeout, log=log)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        # Kill the whole server (uvicorn runs workers as children) and wait until the port is
        # free, so a test can restart it on the same port.
        subprocess.run(["pkill", "-KILL", "-P", str(self.process.pid)], check=False)
        self.process.kill()
        self.process.wait()
        self.process = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)


@pytest.fixture
def sqlite_mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A stopped ``mlflow server`` with a SQLite backend (fast to start), stopped at the end."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = MlflowServer(f"sqlite:///{folder / 'mlflow.db'}", folder)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres_uri: str) -> Iterator[str]:
    """``mlflow server`` backed by PostgreSQL, serving artifacts, on a free loopback port."""
    folder = Path(tempfile.mkdtemp(prefix="thyroid-mlflow-"))
    server = MlflowServer(postgres_uri, folder).start()
    try:
        yield server.uri
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def loopback_port() -> int:
    """A free TCP port on 127.0.0.1 for a server a test starts itself."""
    return free_port()
