"""The tables of a study report, each a list of markdown lines built from settings or evidence:
an experiment's numbers beside the study's, the analyses (gates, output correlations), the leak of
chained cross-validation folds, and the protocol (scale, data, wall time, PyTorch's estimate)."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from cifar_jax.core import metrics
from cifar_jax.experiments import report
from cifar_jax.experiments import stats
from cifar_jax.experiments import verdicts
from cifar_jax.experiments.verdicts import GRAD_NORMS

def _fmt(value: float, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def experiment_table(exp: Any, settings: Sequence[report.Setting]) -> list[str]:
    """setting | the study's number | ours | failed | verdict | exp.columns; one row per reported
    number (settings the study did not report get one row on the experiment's metric)."""
    extra = [verdicts.resolve_metric(m, settings) for m in expand_columns(exp.columns, settings)]
    lines = ["| setting | the study's number (split, epoch) | ours: mean ± 95% CI (n) | failed | the study's run vs "
             "our 95% prediction interval |" + "".join(f" ours: {title} |" for _, title in extra),
             "|---|---|---|---:|---|" + "---:|" * len(extra)]
    primary = exp.config.sweep.metric
    for setting in settings:
        entries = [r for r in exp.reported if r[0] == setting.label] or [(setting.label, math.nan, "–", primary)]
        for _, value, where, metric in entries:
            field, title = verdicts.resolve_metric(metric, settings)
            summ = verdicts.summary(setting, field)
            study_text = "–" if math.isnan(value) else f"{value:g} ({where})"
            verdict = "–" if math.isnan(value) else verdicts.row_verdict(value, field, summ)
            lines.append(f"| {setting.label} | {study_text} | {_mean_ci(summ)} — {title} | "
                         f"{summ['collapsed']}/{summ['runs']} | {verdict} |"
                         + "".join(f" {_mean_ci(verdicts.summary(setting, f))} |" for f, _ in extra))
    return lines


def expand_columns(columns: Sequence[str], settings: Sequence[report.Setting]) -> list[str]:
    """GRAD_NORMS becomes the per-layer gradient-norm fields the runs report, in layer order."""
    layers = list(dict.fromkeys(k for s in settings for run in s.runs for k in run if k.startswith("grad_norm/")))
    return [name for column in columns for name in (layers if column == GRAD_NORMS else [column])]


def _mean_ci(summ: dict[str, Any]) -> str:
    """'61.20 ± 0.85 (5)': mean ± the 95% CI's half-width (n)."""
    return f"{_fmt(summ['mean'])} ± {_fmt(summ['ci_high'] - summ['mean'])} ({summ['n']})"


def analysis_rows(ev: dict[str, Any]) -> tuple[list[tuple[str, list[dict]]], int]:
    """([(setting label, its runs' analysis records)], images analysed) over the finished groups."""
    rows, num_images = [], 0
    found = {g["name"]: g.get("analysis") for g in ev["groups"]}
    for group in ev["plan"]["groups"]:
        result = found.get(group["name"])
        if result is not None:
            num_images = result["num_images"]
            rows += [(spec["label"], [r for r in result["runs"] if r["setting"] == index])
                     for index, spec in enumerate(group["settings"])]
    return rows, num_images


def _mean_sd(values: Sequence[float], digits: int = 3) -> str:
    values = np.asarray(values, np.float64)
    return f"{values.mean():.{digits}f} ± {_fmt(values.std(ddof=1) if values.size > 1 else math.nan, digits)}"


def gate_table(ev: dict[str, Any]) -> list[str]:
    """setting | block | a_1 ... a_K (mean ± sd over seeds of the mean over validation images)."""
    settings, num_images = analysis_rows(ev)
    rows = [(label, b + 1, [_mean_sd(column) for column in zip(*per_run)])
            for label, runs in settings for b, per_run in enumerate(zip(*(r["blocks"] for r in runs)))]
    if not rows:
        return []
    width = max(len(cells) for _, _, cells in rows)
    return [f"Learned branch weights a_k per block at the best checkpoint (mean over {num_images} validation "
            "images; mean ± sd over seeds). Equal weights mean the gate does not choose between branches.", "",
            "| setting | block | " + " | ".join(f"a_{k + 1}" for k in range(width)) + " |",
            "|---|---:|" + "---:|" * width] + [
        f"| {label} | {b} | " + " | ".join(cells + ["–"] * (width - len(cells))) + " |" for label, b, cells in rows]


def correlation_table(ev: dict[str, Any]) -> list[str]:
    """setting | mean, sd of the output-unit correlation matrix with and without its diagonal."""
    settings, num_images = analysis_rows(ev)
    if not settings:
        return []
    names = ("mean", "sd", "off_diagonal_mean", "off_diagonal_sd")
    return [f"Correlations of the output units (logits) over {num_images} validation images at the best "
            "checkpoint, mean ± sd over seeds. With the diagonal (the study's convention) the statistics "
            "depend on the number of units; off-diagonal ones compare like with like.", "",
            "| setting | mean (with diagonal) | sd (with diagonal) | mean (off-diagonal) | sd (off-diagonal) |",
            "|---|---:|---:|---:|---:|"] + [
        f"| {label} | " + " | ".join(_mean_sd([r[n] for r in runs]) for n in names) + " |"
        for label, runs in settings if runs]


def fold_values(settings: Sequence[report.Setting], metric: str = "val_accuracy") -> dict[tuple[int, int], float]:
    """{(fold, seed index): metric} over the kept runs of every setting (runs without a fold left out)."""
    return {(int(run["fold"]), int(run["seed_index"])): float(run[metric])
            for s in settings for run, kept in zip(s.runs, s.kept) if kept and "fold" in run and metric in run}


def paired_folds(leaky: Sequence[report.Setting], correct: Sequence[report.Setting]
                 ) -> tuple[list[int], list[int], dict[str, dict[tuple[int, int], float]]]:
    """The chained folds, the seeds with every one of them in both protocols, and each protocol's
    {(fold, seed index): val accuracy} with their paired difference ('leak')."""
    values = {"correct": fold_values(correct), "leaky": fold_values(leaky)}
    folds = sorted({fold for fold, _ in values["leaky"]})
    seeds = sorted({seed for _, seed in values["leaky"]} & {seed for _, seed in values["correct"]})
    complete = [s for s in seeds if all((f, s) in v for v in values.values() for f in folds)]
    values["leak"] = {key: values["leaky"][key] - values["correct"][key] for key in values["leaky"]
                      if key in values["correct"]}
    return folds, complete, values


def leak_table(leaky: Sequence[report.Setting], correct: Sequence[report.Setting], reference: str) -> list[str]:
    """Chained (leaky) vs fresh (correct) k-fold CV, final-epoch validation accuracy: each fold's mean
    over seeds, and the mean over folds per seed, whose paired difference (same seed, same folds)
    is the leak: how much a fold's score rises because an earlier fold trained on its images."""
    folds, complete, values = paired_folds(leaky, correct)
    if not folds or not complete:
        return []
    rows = [("correct: every fold freshly initialised (`" + reference + "`)", values["correct"]),
            ("leaky: fold k starts from fold k−1's trained weights", values["leaky"]),
            ("**leak** (leaky − correct, paired by seed)", values["leak"])]

    def cell(sample: Sequence[float]) -> str:
        return _mean_ci(metrics.summarize(100.0 * np.asarray(sample)))

    lines = [f"Leaky vs correct {len(folds)}-fold cross-validation: validation accuracy (%) of each fold's held-out "
             "part at the final epoch, mean ± 95% CI over seeds (n); the last column averages each seed's folds "
             f"first (seeds with every fold: {len(complete)}). The chain also trains longer (fold k continues "
             "k − 1 folds' training), so the leak is what the protocol adds: held-out images seen in earlier "
             "folds and the extra training together.", "",
             "| protocol | " + " | ".join(f"fold {f + 1}" for f in folds) + " | mean over folds |",
             "|---|" + "---:|" * (len(folds) + 1)]
    for name, by_key in rows:
        per_fold = [cell([by_key[(f, s)] for s in complete]) for f in folds]
        over_folds = cell([np.mean([by_key[(f, s)] for f in folds]) for s in complete])
        lines.append(f"| {name} | " + " | ".join(per_fold) + f" | {over_folds} |")
    return lines


def protocol_rows(ev: dict[str, Any] | None) -> dict[str, Any]:
    """Split sizes, epochs, runs, wall time and trained images of one experiment's evidence."""
    out = {"train": set(), "epochs": set(), "runs": 0, "wall_s": 0.0, "images": 0, "test": False}
    for group in (ev or {}).get("groups", []):
        num_train, batch = group["num_train"], max(group["batch_size"], 1)
        out["train"].add(num_train)
        out["epochs"].add(group["num_epochs"])
        out["runs"] += group["num_runs"]
        out["wall_s"] += group["wall_time_s"]
        out["images"] += group["num_runs"] * group["num_epochs"] * (num_train // batch) * batch
        out["test"] |= any("test_accuracy" in run for run in group["runs"])
    return out


def horizon(ev: dict[str, Any] | None) -> str:
    """'2 epochs × 8,000 images': the training the experiment's runs had."""
    rows = protocol_rows(ev)
    if not rows["epochs"]:
        return ""
    epochs = "–".join(map(str, sorted(rows["epochs"])[::max(1, len(rows["epochs"]) - 1)]))
    return f"{epochs} epochs × {', '.join(f'{n:,}' for n in sorted(rows['train']))} images"


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 3600:.1f} h"


def _rate(images: int, seconds: float) -> str:
    """Training images of all runs per second of wall time (compiles and evaluation included)."""
    return f"{images / seconds:,.0f}" if images and seconds else "–"


def _data_sources(config: ml_collections.ConfigDict, evidence: dict[str, dict[str, Any]]) -> str:
    """Where the runs read their images, as the evidence records it (the config's when none has run)."""
    dirs = {ev.get("config", {}).get("data", {}).get("dir", "") for ev in evidence.values()} or {config.data.dir}
    return ", ".join(f"`{os.path.basename(d) or 'tfds'}`" for d in sorted(dirs))


def protocol_section(config: ml_collections.ConfigDict, exps: Sequence[Any],
                     evidence: dict[str, dict[str, Any]]) -> list[str]:
    """Splits, selection, seeds, failures, tests, hardware, wall time and the PyTorch estimate."""
    hardware = next((ev["hardware"] for ev in evidence.values() if ev.get("hardware")), {})
    total_wall = sum(protocol_rows(ev)["wall_s"] for ev in evidence.values())
    lines = ["## Protocol", "",
             f"- **Scale** `:{config.study.scale}`; **seeds** {config.num_seeds} per setting (seed i of every "
             f"setting starts from the same key); data {_data_sources(config, evidence)}, "
             f"train_limit {config.data.train_limit or 'all'}, validation {config.data.val_size:g} images carved from "
             "train (class-balanced, fixed by data.seed).",
             "- **Selection on validation only**: best-epoch numbers are each run's epoch of highest validation "
             "accuracy; test metrics are read only at that validation-selected epoch. Where the data have no test "
             "split (the shared CIFAR-10 JPEG images), test columns fall back to the final-epoch validation metric "
             "and say so.",
             f"- **Failed runs**: a NaN/diverged loss, a final train loss at ln 10 = {verdicts.LN10:.3f} or above, "
             f"or a final validation accuracy within {verdicts.NEAR_CHANCE:.0%} of chance; counted in the `failed` "
             "column, never averaged; claims that predict a failure count them as their outcome.",
             "- **Claims**: Welch's t-test of a − b (of an interaction (a − b) − (c − d) where the claim is one; for "
             "'best', of a against every alternative, the largest p deciding), Holm-adjusted over the study's "
             "directional claims; 'no difference' claims by two one-sided tests (TOST) against the margin stated in "
             "the config, outside Holm's family; failure claims count failed runs (Fisher's exact test against a "
             "reference). Cross-validation runs are averaged per seed first. `detectable` is the smallest true "
             f"difference the test finds with 80% power; α = {stats.ALPHA}.",
             "- **Per-row comparisons**: the study's single run against our 95% prediction interval "
             "(t · s · √(1 + 1/n)), where one more of our runs would fall; at a reduced scale the two are different "
             "trainings.",
             "- **Repeated settings**: a traced grid's settings (learning rates, dropout rates, ...) train as one "
             "program in which seed i of every setting reads the same batches. A setting repeated in another "
             "experiment and trained alone (a dropout rate of 0 in a rate grid against the model without dropout) "
             "starts from the same weights and batches, and a rate-0 dropout is the identity, but that other "
             "program sums float32 products in another order: its runs part through rounding after the first steps "
             "and agree in distribution, not bit for bit.",
             f"- **Hardware**: {hardware.get('platform', '?')}, {hardware.get('cpu_count', '?')} CPUs, JAX devices "
             f"{', '.join(hardware.get('devices', ['?']))}; commits {', '.join(_commits(evidence)) or '–'}.",
             f"- **Wall time**: {_duration(total_wall)} of training (compiles and evaluation included) over the "
             "experiments below; `ours: model-img/s` is every run's training images over that time.", ""]
    return lines + protocol_table(exps, evidence, config.study.scale)


def _commits(evidence: dict[str, dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(c for ev in evidence.values() for c in ev.get("commits", [])))


def protocol_table(exps: Sequence[Any], evidence: dict[str, dict[str, Any]], scale: str = "") -> list[str]:
    """One row per experiment with evidence (its scale where not the report's `scale`), and the
    PyTorch estimate's total."""
    lines = ["| experiment | train images | test split | epochs | runs | training wall time | ours: model-img/s | "
             "PyTorch img/s (one run) | PyTorch, runs one after another (est.) |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    torch_total, unknown = 0.0, []
    for exp in (e for e in exps if e.key in evidence):
        rows, rate = protocol_rows(evidence[exp.key]), exp.torch_images_per_s
        estimate = _duration(rows["images"] / rate) if rate and rows["images"] else (
            "n/a (no measured rate)" if rows["images"] else "–")
        torch_total += rows["images"] / rate if rate else 0.0
        unknown += [exp.key] if rows["images"] and not rate else []
        at = evidence[exp.key].get("scale", scale)
        lines.append(f"| {exp.key}{f' (at :{at})' if at != scale else ''} | "
                     f"{', '.join(map(str, sorted(rows['train']))) or '–'} | "
                     f"{'read at the val-selected epoch' if rows['test'] else 'none'} | "
                     f"{', '.join(map(str, sorted(rows['epochs']))) or '–'} | {rows['runs']} | "
                     f"{_duration(rows['wall_s'])} | {_rate(rows['images'], rows['wall_s'])} | "
                     f"{f'{rate:,.0f}' if rate else '–'} | {estimate} |")
    return lines + ["", f"PyTorch estimate: {_duration(torch_total)} for the experiments with a measured rate"
                    + (f" (not counted: {', '.join(unknown)})" if unknown else "") + ". It is the images these runs "
                    "trained (runs × epochs × full batches) divided by PyTorch's training images/s for one run of "
                    "the same model and batch size on a 2-core CPU (`scripts/torch_reference.py`'s loop; the study config "
                    "gives the rates and how they were measured); evaluation passes are not counted, so it is a lower "
                    "bound.", ""]
