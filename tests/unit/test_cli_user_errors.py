"""Simple mistakes end in one line naming the problem, exit status 2 and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (arguments, words the one line must contain); every command writes to "out" if anything.
MISTAKES = [
    (["synth", "--n", "0", "--out", "out"], "--n"),
    (["synth", "--n", "6", "--out", "out"], "cannot fill 5 folds"),  # checked before rendering
    (["synth", "--n", "20", "--folds", "1", "--out", "out"], "--folds"),
    (["synth", "--n", "20", "--test-fraction", "1.5", "--out", "out"], "--test-fraction"),
    (["synth", "--n", "20", "--class-mix", "TR9=1", "--out", "out"], "TR9"),
    (["prep", "dicom", "--in", "missing", "--out", "out", "--salt", "s"], "missing"),
    (["prep", "dicom", "--in", ".", "--out", "out", "--salt", "s", "--frames", "half"], "half"),
    (["prep", "dicom", "--in", ".", "--out", "out", "--salt", "s", "--region", "big"], "big"),
    (["prep", "dicom", "--in", ".", "--out", "out", "--salt", "s", "--labels", "no.csv"], "no.csv"),
    (["prep", "dicom", "--in", ".", "--out", "out"], "salt"),
    (["prep", "ddti", "--in", "missing", "--out", "out"], "missing"),
    (["prep", "ddti", "--in", ".", "--out", "out", "--workers", "0"], "--workers"),
    (["prep", "targets", "--datalist", "missing.json"], "missing.json"),
    (["audit", "missing"], "missing"),
    (["audit", ".", "--against", "missing"], "missing"),
    (["demo", "--epochs", "0", "--out", "out"], "--epochs"),
    (["demo", "--n", "3", "--out", "out"], "cannot fill 5 folds"),
    (["infer", "--model", "m.pt", "--in", "missing", "--out", "out"], "missing"),
    (["infer", "--model", "m.pt", "--in", ".", "--out", "out", "--threshold", "2"], "--threshold"),
    (["sync", "missing"], "missing"),
    (["register", "missing"], "missing"),
]


@pytest.mark.parametrize(("arguments", "words"), MISTAKES, ids=lambda v: " ".join(v)[:40])
def test_a_user_error_is_one_line_exit_2_and_writes_nothing(arguments, words, tmp_path):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    environment.pop("THYROID_MONAI_DEID_SALT", None)
    done = subprocess.run([sys.executable, "-m", "thyroid_monai.cli", *arguments], cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert words in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
