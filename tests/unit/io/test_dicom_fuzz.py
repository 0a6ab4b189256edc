"""A short fuzz campaign in the suite: damaged DICOM through the reader, prep dicom and infer.

The same generator as ``benchmarks/dicom_fuzz.py`` (which runs 10,000 variants): 16 valid seeds,
25 kinds of damage, two duplicate exports. Every file must be read, converted or rejected with a
named reason; nothing may crash, hang or be left half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@pytest.mark.filterwarnings("ignore")
def test_a_few_hundred_damaged_files_give_no_crash_and_no_half_written_output(
    tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmark scripts are not a package
    import dicom_fuzz

    findings = dicom_fuzz.campaign(tmp_path, 260, seed=1)
    assert findings.problems == []
    valid = findings.outcomes["valid seed"]
    seeds = len(dicom_fuzz.SEED_SPECS)
    assert valid["read: ok"] == valid["prep: converted"] == valid["infer: written"] == seeds
    damaged = sum(sum(c.values()) for m, c in findings.outcomes.items() if m != "valid seed") // 3
    assert damaged == 260 + 2  # every variant has one outcome per stage (and two duplicates)
    rejected = sum(c["read: rejected"] for c in findings.outcomes.values())
    assert rejected > 50  # the damage is real
    assert findings.outcomes["duplicate export"]["prep: rejected (read)"] == 2
    # The prep run still wrote its datalist and manifest next to rejected.csv.
    for name in ("datalist.json", "manifest.json", "rejected.csv"):
        assert (tmp_path / "prep" / name).is_file()
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert all(entry["input"] is None for entry in summary["files"])  # DICOM paths hidden
