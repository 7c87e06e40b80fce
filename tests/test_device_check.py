"""scripts/device_check.py in its smoke mode: the accelerator path on CPU, end to end (CI)."""

import json
import os
import sys

import pytest

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import device_check  # noqa: E402


@pytest.mark.slow
def test_device_check_smoke_trains_compares_sizes_and_evaluates_a_checkpoint_on_cpu(tmp_path):
    report = device_check.main(["--smoke", "--out", str(tmp_path)])
    written = [name for name in os.listdir(tmp_path)]
    assert sorted(os.path.splitext(name)[1] for name in written) == [".json", ".md"], written
    with open(tmp_path / next(n for n in written if n.endswith(".json"))) as f:
        assert json.load(f)["mode"] == "smoke"
    assert all(r["img_per_s"] > 0 and r["runs"] == 2 for r in report["train"].values())
    assert {"xla/float32", "patches/float32"} <= set(report["conv_and_dtype"])
    largest = report["largest_block_cnn"]
    assert largest["all_at_once"] >= 1 and largest["one_at_a_time"] == "not measured (smoke)", largest
    assert report["checkpoint_on_cpu"]["equal_accuracy"], report["checkpoint_on_cpu"]
    assert "note" in report["pytorch_same_device"] or report["pytorch_same_device"]["img_per_s"]["torch.func"] > 0
