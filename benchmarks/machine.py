"""What a benchmark's figures were measured on, recorded with every result file.

The scripts import it as ``from machine import describe_machine`` (``python benchmarks/x.py``
puts ``benchmarks/`` first on the import path).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe_machine(**details: object) -> dict[str, object]:
    """CPU, cores, Python and the 1-minute load average, plus the script's own ``details``.

    Args:
        **details: What else the figures depend on (torch threads, GPU, library versions).

    Returns:
        A JSON-ready mapping; the load average says whether something else was running.
    """
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        **details,
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Writes a benchmark's result as indented JSON (creating its folder) and prints it."""
    text = json.dumps(result, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text)
