"""The local store that holds a run's records while the tracking server is unreachable.

Training runs are long; a tracking outage must cost minutes, not results. When the server
(``http(s)://``) does not answer, the MLflow handlers
(:class:`~thyroid_monai.tracking.handlers.ResilientMLFlowHandler`) record the run in a local
SQLite store (``fallback_dir/mlruns.db``, :func:`local_store_uri`); a state file in the same
folder names the server the records are meant for and whether they still wait for a replay
(:func:`recorded_target`, :func:`needs_sync`). :func:`is_unreachable` tells an outage from a
request the server refused, :func:`server_answers` probes the server's health endpoint. The
replay is :func:`~thyroid_monai.tracking.sync.sync_offline_store`.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from thyroid_monai.io.files import write_json_atomic

STATE_FILE = "offline_tracking.json"
STORE_FILE = "mlruns.db"
REMOTE_RUN_TAG = "thyroid_monai.remote_run_id"
SYNCED_TAG = "thyroid_monai.synced_to"


def is_unreachable(error: BaseException) -> bool:
    """Whether an exception means the tracking server cannot be reached (not a bad request)."""
    if isinstance(error, MlflowException):
        # MLflow wraps connection failures, timeouts and exhausted retries this way; requests it
        # rejected (4xx) carry the server's own message instead.
        return str(error).startswith("API request to")
    return isinstance(error, ConnectionError | TimeoutError)


def server_answers(uri: str, timeout: float = 5.0) -> bool:
    """Whether an ``http(s)`` tracking server answers its health endpoint (other URIs: True)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def local_store_uri(folder: str | Path) -> str:
    """``sqlite:///`` URI of the fallback store inside ``folder``."""
    return f"sqlite:///{(Path(folder) / STORE_FILE).resolve()}"


def _write_state(folder: Path, remote_uri: str, *, pending: bool) -> None:
    write_json_atomic(folder / STATE_FILE, {"target_uri": remote_uri, "pending": pending})


def _read_state(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def recorded_target(folder: str | Path) -> str | None:
    """The server a fallback store was meant for, if it recorded one."""
    target = _read_state(folder).get("target_uri")
    return str(target) if target else None


def needs_sync(folder: str | Path) -> bool:
    """Whether a fallback store holds records not yet replayed onto its server."""
    return bool(_read_state(folder).get("pending", False))
