"""Plots of settings over seeds (matplotlib's object API, no pyplot state): learning curves,
per-step panels, and a metric against one swept field. Sweep and study reports share them."""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any, Sequence

import numpy as np

from cifar_jax.core.metrics import summarize
from cifar_jax.job import storage


def display_scale(metric: str) -> float:
    """Accuracies and F1 in %; losses and epochs as they are (as the tables show them)."""
    return 1.0 if "loss" in metric or metric.endswith("epoch") else 100.0


def format_value(value: Any) -> str:
    """A short, stable text for a swept value: 0.001, 1e-05, 32-64 for (32, 64), none for ()."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "-".join(format_value(v) for v in value) if value else "none"
    return str(value)


def _save(fig: Any, path: str) -> None:
    """Writes the figure through the workdir's path type (a gs:// workdir too), as its suffix says."""
    with storage.path(path).open("wb") as f:
        fig.savefig(f, format=os.path.splitext(path)[1].lstrip("."))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global backend or state to disturb

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def curve_metric(settings: Sequence[Any]) -> str | None:
    for name in ("val_accuracy", "test_accuracy", "train_accuracy"):
        if any(name in s.curves for s in settings):
            return name
    return None


def plot_learning_curves(path: str, settings: Sequence[Any], title: str, metric: str | None = None) -> bool:
    """Mean over kept runs per epoch with a min-max band; small multiples beyond 8 settings.
    `metric` defaults to the first accuracy the runs report (`curve_metric`)."""
    metric = metric or curve_metric(settings)
    if metric is None or not any(metric in s.curves for s in settings):
        return False
    overlay = len(settings) <= 8
    cols = 1 if overlay else min(4, len(settings))
    rows = 1 if overlay else math.ceil(len(settings) / cols)
    fig = _figure(7 if overlay else 3 * cols, 4.5 if overlay else 2.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    for i, setting in enumerate(settings):
        ax = axes[0 if overlay else i]
        curves = setting.curves.get(metric)
        if curves is None or not curves.size:
            continue
        kept = curves[:, setting.kept] * display_scale(metric)
        epochs = np.arange(1, curves.shape[0] + 1)
        if kept.shape[1] and not np.all(np.isnan(kept)):
            mean_line, low, high = np.nanmean(kept, axis=1), np.nanmin(kept, axis=1), np.nanmax(kept, axis=1)
            line, = ax.plot(epochs, mean_line, marker="o", markersize=3, label=setting.label)
            if len(epochs) > 1:
                ax.fill_between(epochs, low, high, alpha=0.2, color=line.get_color())
            else:  # one epoch: no curve, so the band is drawn as a bar
                line.set_xdata(epochs + (i - (len(settings) - 1) / 2) * 0.04 if overlay else epochs)
                ax.errorbar(line.get_xdata(), mean_line, yerr=[mean_line - low, high - mean_line], capsize=4,
                            color=line.get_color())
        elif curves.shape[1]:  # every run failed (left out of the means): say so instead of an empty panel
            ax.plot([], [], linestyle="none", label=f"{setting.label}: all {curves.shape[1]} runs failed")
            if not overlay:
                ax.text(0.5, 0.5, "all runs failed", transform=ax.transAxes, ha="center", fontsize=7)
        if not overlay:
            ax.set_title(setting.label, fontsize=7)
    for ax in axes[len(settings):] if not overlay else ():
        ax.set_visible(False)
    if overlay:
        axes[0].legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator

    num_epochs = max((s.curves[metric].shape[0] for s in settings if metric in s.curves), default=1)
    axes[0].set_xlim(0.5, num_epochs + 0.5)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.supxlabel("epoch")
    fig.supylabel(f"{metric}{' (%)' if display_scale(metric) > 1 else ''}")
    fig.suptitle(f"{title}: mean over seeds, band = min–max", fontsize=9)
    _save(fig, path)
    return True


def plot_step_panels(path: str, panels: dict[str, list[tuple[str, np.ndarray, np.ndarray, bool]]], ylabel: str,
                     title: str, log: bool = False) -> bool:
    """One panel per entry of `panels` (e.g. per layer), each overlaying settings as (label, steps,
    values (records, runs), dashed): the mean over runs against the training step, band = min–max."""
    panels = {name: series for name, series in panels.items() if series}
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    width = 7 if cols == 1 else 4 * cols
    fig = _figure(width, 4.5 if rows == 1 else 3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True).ravel()
    for ax, (name, series) in zip(axes, panels.items()):
        for label, steps, values, dashed in series:
            line, = ax.plot(steps, np.nanmean(values, axis=1), label=label, linewidth=1,
                            linestyle="--" if dashed else "-")
            ax.fill_between(steps, np.nanmin(values, axis=1), np.nanmax(values, axis=1), alpha=0.2,
                            color=line.get_color())
        if log:
            ax.set_yscale("log")
        if len(panels) > 1:
            ax.set_title(name, fontsize=8)
        ax.tick_params(labelbottom=True)  # panels without one below them keep their step axis
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6)
    fig.supxlabel("training step")
    fig.supylabel(ylabel)
    fig.suptitle(textwrap.fill(f"{title}: mean over seeds, band = min–max", 15 * width), fontsize=9)
    _save(fig, path)
    return True


def plot_axis(path: str, settings: Sequence[Any], rows: Sequence[dict[str, Any]], field: str, metric: str,
              alpha: float) -> bool:
    """`metric` against the values of `field`: mean with 95% CI bars, one series per combination
    of the other swept fields; best = star, not significantly different = filled, worse = hollow.
    `rows`: the settings' statistics (`report.stage_rows`: mean, ci_high, best, not_different)."""
    ticks = list(dict.fromkeys(format_value(s.values.get(field)) for s in settings))
    others = lambda s: ", ".join(f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in s.values.items()
                                 if k != field)
    series = list(dict.fromkeys(others(s) for s in settings))
    legend_cols = 2 if max(map(len, series)) <= 45 else 1
    legend_rows = math.ceil(len(series) / legend_cols) if 1 < len(series) <= 16 else 0
    fig = _figure(max(6.5, 0.6 * len(ticks) + 2), 4 + 0.15 * legend_rows)
    ax = fig.subplots()
    scale = display_scale(metric)
    for j, name in enumerate(series):
        offset = (j - (len(series) - 1) / 2) * min(0.3 / max(len(series), 1), 0.08)
        members = [(s, r) for s, r in zip(settings, rows) if others(s) == name and not math.isnan(r["mean"])]
        if not members:
            continue
        x = np.array([ticks.index(format_value(s.values.get(field))) + offset for s, _ in members])
        y = np.array([r["mean"] for _, r in members]) * scale
        err = np.array([0.0 if math.isnan(r["ci_high"]) else r["ci_high"] - r["mean"] for _, r in members]) * scale
        bars = ax.errorbar(x, y, yerr=err, capsize=3, linestyle="-" if len(members) > 1 else "none",
                           label=name or None)
        color = bars[0].get_color()
        for xi, yi, (_, r) in zip(x, y, members):
            marker = "*" if r["best"] else "o"
            filled = r["best"] or r["not_different"]
            ax.plot([xi], [yi], marker=marker, markersize=12 if r["best"] else 6, color=color,
                    markerfacecolor=color if filled else "white", linestyle="none")
    ax.set_xticks(range(len(ticks)), ticks, rotation=30 if max(map(len, ticks)) > 6 else 0)
    ax.set_xlabel(field)
    ax.set_ylabel(f"{metric}{' (%)' if scale > 1 else ''}")
    ax.set_title(f"{metric} vs {field}: mean ± 95% CI over seeds\n★ best   ● not significantly different "
                 f"(Welch p ≥ {alpha} against the best, unadjusted)   ○ significantly worse", fontsize=8)
    if legend_rows:
        fig.legend(loc="outside lower center", ncols=legend_cols, fontsize=6, frameon=False)
    _save(fig, path)
    return True


def plot_folds(path: str, folds: Sequence[int], series: Sequence[tuple[str, np.ndarray]],
               reference: Sequence[tuple[int, float]], title: str) -> bool:
    """Cross-validation protocols side by side: per fold (numbered from 1, as the tables), each
    series' mean ± 95% CI over seeds (`series`: label, values (folds, seeds) in %), and the study's
    own numbers (`reference`: 0-based fold, value) as crosses."""
    fig = _figure(6.5, 4.3)
    ax = fig.subplots()
    x = np.arange(1, len(folds) + 1)
    for j, (label, values) in enumerate(series):
        summaries = [summarize(row) for row in values]
        mean = np.array([s["mean"] for s in summaries])
        err = np.nan_to_num(np.array([s["ci_high"] for s in summaries]) - mean)
        ax.errorbar(x + (j - (len(series) - 1) / 2) * 0.08, mean, yerr=err, capsize=3, marker="o", label=label)
    shown = [(folds.index(f) + 1, v) for f, v in reference if f in folds]
    if shown:
        ax.plot(*zip(*shown), marker="x", markersize=8, linestyle="none", color="black",
                label="the study (its leaky folds, one run)")
    ax.set_xticks(x, [str(f + 1) for f in folds])
    ax.set_xlabel("fold")
    ax.set_ylabel("val_accuracy (%)")
    ax.set_title("\n".join(textwrap.wrap(f"{title}: mean ± 95% CI over seeds", 90)), fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, path)
    return True
