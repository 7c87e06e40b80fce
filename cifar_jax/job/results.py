"""Records of a job: per-epoch metrics, the best epoch, results.json and per-setting statistics.

One definition of each, used by training, evaluation and the sweep report, so that "the best
epoch" (the checkpoint's `checkpoint.best_metric`) and "a setting's mean over seeds" can never
disagree between the files a user reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cifar_jax.core import metrics
from cifar_jax.core.runs import RunGrid
from cifar_jax.errors import ConfigError

RECORDED_EVAL_METRICS = ("loss", "accuracy", "macro_f1", "per_class_accuracy", "confusion")
BEST_METRICS = ("val_accuracy", "val_loss", "val_macro_f1")  # reported at the best epoch


def check_best_metric(config: Any) -> str:
    """checkpoint.best_metric names a validation metric the job records, and the job has a
    validation split to record it on; '' keeps no best checkpoint."""
    metric = config.checkpoint.best_metric
    if metric == "":
        return metric
    if metric not in BEST_METRICS:
        raise ConfigError(f"checkpoint.best_metric={metric!r} is unknown; use one of {', '.join(BEST_METRICS)} "
                          "(or '' for no best checkpoint)")
    data = config.data
    if not data.get("num_folds") and isinstance(data.val_size, (int, float)) and data.val_size == 0:
        raise ConfigError(f"checkpoint.best_metric={metric!r} needs a validation split, but data.val_size=0 and "
                          "no data.num_folds; set data.val_size > 0 or checkpoint.best_metric=''")
    return metric


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


def epoch_record(train_sums: Mapping[str, np.ndarray], evals: dict[str, dict], diverged: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """Per-run metrics of one epoch; a diverged run reports NaN, never a stale number."""
    count, steps = np.asarray(train_sums["count"]), np.asarray(train_sums["steps"])
    record = {
        "train_loss": np.asarray(train_sums["loss"]) / count,
        "train_accuracy": np.asarray(train_sums["correct"]) / count,
        "dead_relu_fraction": np.asarray(train_sums["dead_fraction"]) / steps,
        **{f"grad_norm/{layer}": np.asarray(total) / steps for layer, total in train_sums["grad_norm"].items()},
    }
    for split, result in evals.items():
        for name in RECORDED_EVAL_METRICS:
            record[f"{split}_{name}"] = result[name]
    for name, values in record.items():
        mask = diverged.reshape((-1,) + (1,) * (np.ndim(values) - 1))
        record[name] = np.where(mask, np.nan, values)
    return record


def jsonable(record: Mapping[str, np.ndarray]) -> dict[str, list]:
    return {name: np.asarray(values).tolist() for name, values in record.items()}


def metrics_lines(epoch: int, record: Mapping[str, Any], run_ids: list[dict], diverged: Sequence[bool]) -> list[str]:
    """One epoch's metrics.jsonl lines, one per run."""
    return [json.dumps({"epoch": epoch, **ids, "diverged": bool(diverged[r]), **metrics.per_run_rows(record, r)})
            for r, ids in enumerate(run_ids)]


def mean_over_runs(record: Mapping[str, Any], metric: str) -> float | None:
    """The mean of `metric` over the runs that have it (None when none has)."""
    values = np.asarray(record.get(metric, []), dtype=np.float64)
    return float(np.nanmean(values)) if values.size and not np.all(np.isnan(values)) else None


def best_epoch_index(curve: np.ndarray, metric: str) -> np.ndarray:
    """Per run (columns of an (epochs, runs) curve), the index of its best epoch by `metric`; NaN
    epochs never win, and ties go to the earliest epoch."""
    filled = nan_as_worst(curve, metric)
    return filled.argmin(axis=0) if lower_is_better(metric) else filled.argmax(axis=0)


def nan_as_worst(values: Any, metric: str) -> np.ndarray:
    """`values` as float64 with NaN (a diverged run) replaced by the worst value `metric` can take,
    so it never wins a best-epoch choice."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), np.inf if lower_is_better(metric) else -np.inf, values)


def best_epoch_metrics(curves: Mapping[str, np.ndarray], metric: str) -> dict[str, np.ndarray]:
    """best_epoch (1-based) and best_val_* per run, chosen by `metric` (checkpoint.best_metric)."""
    if metric not in curves or not np.asarray(curves[metric]).size:
        return {}
    best = best_epoch_index(curves[metric], metric)
    runs = np.arange(best.shape[0])
    out = {"best_epoch": best + 1.0}
    for name in BEST_METRICS:
        if name in curves:
            out[f"best_{name}"] = np.asarray(curves[name], dtype=np.float64)[best, runs]
    return out


def setting_summaries(values: np.ndarray, setting_index: np.ndarray, num_settings: int) -> list[dict[str, float]]:
    """Mean, std and 95% CI over each setting's runs."""
    return [metrics.summarize(np.asarray(values)[setting_index == s]) for s in range(num_settings)]


def test_at_best_epoch(history: list[dict], best_epoch: np.ndarray) -> dict[str, np.ndarray]:
    """`best_test_*` per run from a history that scored the test split every epoch (else empty)."""
    if not best_epoch.size or any(f"test_{name}" not in h for h in history for name in RECORDED_EVAL_METRICS):
        return {}
    rows = best_epoch.astype(int) - 1
    return {f"best_test_{name}": np.stack([np.asarray(history[e][f"test_{name}"], dtype=np.float64)[r]
                                           for r, e in enumerate(rows)])
            for name in RECORDED_EVAL_METRICS}


def summarize_results(config: Any, grid: RunGrid, history: list[dict], diverged: np.ndarray,
                      wall_time_s: float, best_test: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """results.json: per-run final and best-epoch metrics (test at the best epoch: `best_test`, as
    `job/best_runs.py` scored it, or read from a history that scored test every epoch), and
    per-setting statistics over seeds."""
    final = {name: np.asarray(values, dtype=np.float64) for name, values in history[-1].items()}
    curves = {name: np.stack([np.asarray(h[name], dtype=np.float64) for h in history])
              for name in BEST_METRICS if name in final}
    best_metric = config.checkpoint.best_metric  # validated: a val metric the job records, or ''
    best = best_epoch_metrics(curves, best_metric)
    if best:
        best.update(test_at_best_epoch(history, best["best_epoch"]) if best_test is None else best_test)
    final.update({name: v if name == "best_epoch" else np.where(diverged.reshape((-1,) + (1,) * (np.ndim(v) - 1)),
                                                                  np.nan, v) for name, v in best.items()})
    return {
        "config_name": config.get("name", ""),
        "num_runs": grid.num_runs,
        "num_seeds": grid.num_seeds,
        "num_epochs": len(history),
        "best_metric": best_metric,
        "settings": list(grid.settings),
        "wall_time_s": wall_time_s,
        "runs": [{**ids, "diverged": bool(diverged[r]), **metrics.per_run_rows(final, r)}
                 for r, ids in enumerate(grid.ids())],
        "summary": {name: setting_summaries(values, grid.setting_index, len(grid.settings))
                    for name, values in final.items() if np.ndim(values) == 1 and name != "best_epoch"},
    }
