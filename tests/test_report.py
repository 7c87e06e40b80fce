"""Sweep report: statistics against scipy on fixed numbers, diverged runs, tables, plots, TensorBoard."""

import csv
import json
import math
import os

import numpy as np
import pytest
import scipy.stats

from cifar_jax.experiments import plots
from cifar_jax.experiments import report
from cifar_jax.experiments import stats

A = [0.600, 0.612, 0.618, 0.605]  # the best
B = [0.598, 0.615, 0.590, 0.611]  # close to A: not significantly different
C = [0.400, 0.420, 0.410, 0.405]  # clearly worse


def test_welch_p_is_scipys_welch_test():
    assert stats.welch_p(A, B) == pytest.approx(scipy.stats.ttest_ind(A, B, equal_var=False).pvalue, rel=1e-12)
    assert stats.welch_p(A, C) == pytest.approx(scipy.stats.ttest_ind(A, C, equal_var=False).pvalue, rel=1e-12)
    assert stats.welch_p(A + [math.nan], B) == stats.welch_p(A, B)  # NaN (diverged) runs do not count
    assert math.isnan(stats.welch_p(A, [0.5]))  # one run: nothing to test
    assert stats.welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0 and stats.welch_p([0.5, 0.5], [0.6, 0.6]) == 0.0


def test_holm_adjustment():
    adjusted = stats.holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_compare_to_best_marks_and_direction():
    result = report.compare_to_best([B, A, C, [0.5]], lower_is_better=False)
    assert [r["mark"] for r in result] == [report.MARK_SAME, report.MARK_BEST, "", report.MARK_UNTESTED]
    assert result[0]["p"] >= 0.05 > result[2]["p"]
    losses = report.compare_to_best([[1 - a for a in A], [1 - c for c in C]], lower_is_better=True)
    assert [r["best"] for r in losses] == [True, False]  # 1 - A is the lower loss


def make_setting(label, values, stage=0, diverged=(), epochs=None):
    runs = [{"run": i, "val_accuracy": math.nan if i in diverged else v, "val_loss": 1 - v,
             "diverged": i in diverged} for i, v in enumerate(values)]
    curves = {"val_accuracy": np.asarray(epochs if epochs is not None else [values], dtype=float)}
    return report.Setting(label=label, group=label, stage=stage, values={"x": label}, runs=runs, curves=curves)


def test_rows_match_scipy_and_exclude_diverged_runs_visibly():
    settings = [make_setting("a", A), make_setting("b", B + [0.1], diverged={4}), make_setting("c", C)]
    rows = report.stage_rows(settings, "val_accuracy")
    assert [(r["n"], r["diverged"]) for r in rows] == [(4, 0), (4, 1), (4, 0)]
    low, high = scipy.stats.t.interval(0.95, 3, loc=np.mean(B), scale=scipy.stats.sem(B))
    assert (rows[1]["mean"], rows[1]["ci_low"], rows[1]["ci_high"]) == pytest.approx((np.mean(B), low, high))
    assert rows[1]["std"] == pytest.approx(np.std(B, ddof=1))
    assert rows[1]["p"] == pytest.approx(scipy.stats.ttest_ind(B, A, equal_var=False).pvalue)
    assert [r["mark"] for r in rows] == [report.MARK_BEST, report.MARK_SAME, ""]
    assert rows[1]["not_different"] and not rows[2]["not_different"]


def test_best_epoch_metrics_come_from_the_epoch_of_best_val_accuracy():
    runs = [{"run": 0}, {"run": 1}]
    curves = {"val_accuracy": np.array([[0.5, 0.6], [0.7, 0.5], [0.6, 0.55]]),
              "val_loss": np.array([[1.0, 0.9], [0.8, 1.1], [0.7, 1.0]])}
    report.add_best_epoch(runs, curves)
    assert runs[0] == {"run": 0, "best_epoch": 2, "best_val_accuracy": 0.7, "best_val_loss": 0.8}
    assert runs[1]["best_epoch"] == 1 and runs[1]["best_val_accuracy"] == 0.6


def write_group(root, name, grid_name, samples, epochs=3, diverged=(), folds=None):
    """A group directory as the training core writes it: one setting per grid value."""
    group_dir = os.path.join(root, name)
    os.makedirs(group_dir)
    runs, lines = [], []
    for s, (value, finals) in enumerate(samples.items()):
        for seed, final in enumerate(finals):
            run = len(runs)
            bad = (value, seed) in diverged
            extra = {"fold": folds[seed]} if folds else {}
            for epoch in range(1, epochs + 1):
                acc = math.nan if bad else final - 0.1 * (epochs - epoch)
                lines.append(json.dumps({"epoch": epoch, "run": run, "setting": s, grid_name: value, **extra,
                                         "diverged": bad, "val_accuracy": acc, "val_loss": 2 - acc}))
            runs.append({"run": run, "seed_index": seed, "setting": s, grid_name: value, **extra, "diverged": bad,
                         "val_accuracy": math.nan if bad else final, "val_loss": math.nan if bad else 2 - final,
                         "test_accuracy": math.nan if bad else final - 0.01})
    with open(os.path.join(group_dir, "metrics.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(group_dir, "results.json"), "w") as f:
        json.dump({"num_epochs": epochs, "settings": [{grid_name: v} for v in samples], "runs": runs}, f)


def group_record(name, field, grid_name, values, stage=0):
    return {"name": name, "stage": stage, "axis": None, "fixed": {}, "traced": {field: list(values)},
            "settings": [{"label": f"{grid_name}={report.format_value(v)}", "values": {field: v},
                          "grid": {grid_name: v}} for v in values]}


@pytest.fixture()
def lr_sweep(tmp_path):
    values = (0.001, 0.01, 0.1)
    write_group(str(tmp_path), "all", "learning_rate", {0.001: B, 0.01: A, 0.1: C + [0.9]},
                diverged={(0.1, 4)})
    sweep = {"name": "lr", "kind": "grid", "axes": [["optim.learning_rate", list(values)]], "constraints": [],
             "metric": "val_accuracy", "alpha": 0.05, "labels": [], "chosen": {},
             "groups": [group_record("all", "optim.learning_rate", "learning_rate", values),
                        group_record("missing", "optim.learning_rate", "learning_rate", (1.0,))]}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    return tmp_path


def test_write_report_tables_plots_and_tensorboard(lr_sweep):
    paths = report.write_report(str(lr_sweep))
    with open(paths["csv"]) as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "val_accuracy"]
    assert [r["setting"] for r in rows] == ["learning_rate=0.001", "learning_rate=0.01", "learning_rate=0.1"]
    assert [r["optim.learning_rate"] for r in rows] == ["0.001", "0.01", "0.1"]
    assert [(r["n"], r["diverged"], r["best"], r["not_different"]) for r in rows] == [
        ("4", "0", "0", "1"), ("4", "0", "1", "0"), ("4", "1", "0", "0")]
    assert float(rows[2]["mean"]) == pytest.approx(np.mean(C))  # the diverged 5th run is excluded
    assert float(rows[0]["p"]) == pytest.approx(scipy.stats.ttest_ind(B, A, equal_var=False).pvalue)
    metrics = {r["metric"] for r in csv.DictReader(open(paths["csv"]))}
    assert {"val_accuracy", "best_val_accuracy", "val_loss", "best_val_loss", "test_accuracy"} <= metrics
    md = (lr_sweep / "results.md").read_text()
    assert "Welch" in md and "diverged" in md and "not* significantly different" in md
    assert "| learning_rate=0.1 | 4 | 1 |" in md and "Not finished yet: `missing`" in md
    assert report.MARK_SAME in md and report.MARK_BEST in md
    for name in ("learning_curves.png", "sweep_optim.learning_rate.png"):
        assert (lr_sweep / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    runs = sorted(os.listdir(lr_sweep / "tensorboard"))
    assert runs == ["1-learning_rate=0.001", "1-learning_rate=0.01", "1-learning_rate=0.1"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(lr_sweep / "tensorboard" / runs[0]))
    report.write_report(str(lr_sweep))  # a rerun rewrites, it does not append a second event file
    assert len(os.listdir(lr_sweep / "tensorboard" / runs[0])) == 1


def test_folds_get_a_per_fold_table(tmp_path):
    write_group(str(tmp_path), "all", "learning_rate", {0.01: [0.9, 0.91, 0.92, 0.93]}, folds=[0, 1, 0, 1])
    sweep = {"name": "cv", "kind": "grid", "axes": [["optim.learning_rate", [0.01]]], "constraints": [],
             "metric": "val_accuracy", "groups": [group_record("all", "optim.learning_rate", "learning_rate", (0.01,))]}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    report.write_report(str(tmp_path), tensorboard=False)
    md = (tmp_path / "results.md").read_text()
    assert "| setting | fold 0 | fold 1 |" in md and "| learning_rate=0.01 | 91.00 | 92.00 |" in md
    assert "seeds × folds" in md


def test_small_multiples_for_many_settings(tmp_path):
    settings = [make_setting(f"s{i}", [0.5 + i / 100, 0.51 + i / 100], epochs=[[0.4, 0.41], [0.5, 0.52]])
                for i in range(12)]
    assert plots.plot_learning_curves(str(tmp_path / "c.png"), settings, "many")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_value_formatting_and_path_names():
    assert [report.format_value(v) for v in (1e-3, 1e-5, 4, (32, 64), (), "cnn", 0.0)] == [
        "0.001", "1e-05", "4", "32-64", "none", "cnn", "0"]
    assert report.path_name("conv_features[0]=32,lr=1e-05") == "conv_features0=32,lr=1e-05"
    assert report.path_name("a b/c") == "a_b_c"
