"""The benchmark's report logic (scripts/benchmark_report.py) on hand-made rows: which PyTorch way
a ratio is taken against, and how a way skipped for memory shows. No timings, no torch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark_report  # noqa: E402


def _row(torch: dict) -> dict:
    auto = {"images_per_s": 50.0, "images_per_cpu_s": 25.0, "runs_per_group": 1, "compile_s": 9.0,
            "peak_rss_mb": 5000.0, "steps": 2, "steps_per_call": 1, "streams": 0, "microbatches": 1}
    return {"cell": "block_full b128 8 seeds", "model": "block_full", "batch_size": 128, "seeds": 8, "rates": [],
            "runs": 8, "jax": {"auto": auto}, "torch": torch, "flops_per_image": 1e9}


SEQUENTIAL = {"images_per_s": 40.0, "images_per_cpu_s": 20.0}


def test_a_way_skipped_for_memory_is_not_the_yardstick_and_says_so():
    row = _row({"sequential": SEQUENTIAL, "torch.func": {"skipped": "8 models need ~12 GB > 9 GB"}})
    assert benchmark_report.best_torch(row) == ("sequential", 40.0)
    assert benchmark_report.targets([row]) == ["block_full, batch 128, 8 seed(s): >= 1.3x PyTorch: 1.25x  MISSED"]
    assert "| 40 | skipped (memory) | 1.25 |" in benchmark_report.table([row], peak=1e11)
    assert "torch.func - (skipped: 8 models need ~12 GB > 9 GB)" in benchmark_report.cell_line(row)


def test_the_ratio_is_to_the_faster_pytorch_way():
    row = _row({"sequential": SEQUENTIAL, "torch.func": {"images_per_s": 20.0, "images_per_cpu_s": 10.0}})
    assert benchmark_report.best_torch(row) == ("sequential", 40.0)
    row["torch"]["torch.func"]["images_per_s"] = 100.0
    assert benchmark_report.targets([row])[0].endswith("0.50x  MISSED")
