"""Atomic file writing: a reader, a crash or a kill never sees a half-written output file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _suffixes(path: Path) -> str:
    """All suffixes of a file name (``.nii.gz`` for ``a.nii.gz``), kept for format detection."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary file has the same suffixes as the target, so libraries that pick a format from
    the extension (nibabel, PIL) write the right format. On any exception the temporary file is
    removed and the target is left as it was.

    Args:
        path: The final destination; its parent folder is created if missing.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{_suffixes(path)}"
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, payload: Any, *, indent: int | None = 1) -> Path:
    """Writes JSON atomically (UTF-8, keys in insertion order, trailing newline)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=indent) + "\n", encoding="utf-8")
    return path


def atomic_folder(folder: str | Path, write: Callable[[Path], object]) -> Path:
    """Writes a whole folder at once.

    ``write(staging)`` fills a hidden sibling folder, which then replaces ``folder``. A failure
    (or a kill) while writing leaves no half of a folder: readers see the previous folder or the
    complete new one, and the staging folder is removed on failure.

    Args:
        folder: The folder to (re)place.
        write: Fills the staging folder it is given.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        write(staging)
        if folder.exists():
            old = Path(
                tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old")
            )
            os.replace(folder, old / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
