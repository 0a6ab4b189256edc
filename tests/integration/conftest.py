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
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


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


def _wait_for_http(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s:\n{log.read_text()}")


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


@pytest.fixture(scope="module")
def mlflow_server(postgres_uri: str) -> Iterator[str]:
    """``mlflow server`` backed by PostgreSQL, serving artifacts, on a free loopback port."""
    base = Path(tempfile.mkdtemp(prefix="thyroid-mlflow-"))
    port = free_port()
    log = base / "server.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", postgres_uri,
        "--artifacts-destination", str(base / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment)
    try:
        _wait_for_http(f"http://127.0.0.1:{port}/health", process, timeout=90, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)
