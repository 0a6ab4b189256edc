"""The RLAR alignment benchmark trains with and without the penalty and records what RLAR sees."""

import json
from pathlib import Path

from integration_helpers import load_benchmark


def test_a_small_run_records_cosine_quantiles_per_epoch_and_the_penalty(tmp_path: Path):
    benchmark = load_benchmark("rlar_alignment")
    benchmark.main(["--images", "16", "--size", "32", "--epochs", "2", "--every", "1",
                    "--rlar-warmup", "0", "--configs", "sum", "rlar", "--ratios",
                    "--out", str(tmp_path)])  # fmt: skip
    result = json.loads((tmp_path / "rlar_alignment.json").read_text())
    assert (tmp_path / "rlar_alignment.png").stat().st_size > 0
    for config in ("sum", "rlar"):
        epochs = result["epochs"][config]
        assert [row["epoch"] for row in epochs] == [1, 2]
        for row in epochs:
            for latent in ("deepest", "pooled"):
                low, high = row[f"train_align_{latent}_p05"], row[f"train_align_{latent}_p95"]
                assert -1.0 <= low <= row[f"train_align_{latent}_p50"] <= high <= 1.0
    assert not any("train_rlar_penalty" in row for row in result["epochs"]["sum"])
    assert any(row.get("train_rlar_weight", 0) > 0 for row in result["epochs"]["rlar"])
    forms = result["encoder_gradient_ratios"]
    assert len(forms) == len(benchmark.FORMS)
    assert all(form["gradient_ratio_per_unit_weight"] >= 0 for form in forms)
