"""Sweep results as tables and plots: every cell a distribution over seeds, every comparison a test.

`write_report(workdir)` reads `workdir/sweep.json` (written by `cifar_jax.experiments.sweep`) and each group's
`results.json` / `metrics.jsonl`, and writes

    results.csv        one row per (stage, setting, metric): n, diverged, mean, std, 95% CI,
                       Welch p-value against the stage's best setting, Holm-adjusted p
    results.md         the same as readable tables, with a legend
    plots/             learning curves (mean line, min-max band over seeds) and one chart per
                       swept axis (mean with 95% CI error bars)
    tensorboard/<s>/   one TensorBoard run per setting: its hyperparameters and per-epoch means

It can be rerun at any time (it only reads the groups' files), e.g. on a half-finished sweep.

Statistics, and why:

- Runs flagged `diverged` (NaN/inf loss at some step) are excluded from every statistic and
  counted in a visible `diverged` column: their metrics are NaN, and a mean that silently drops
  them would hide instability.
- The 95% CI is Student-t over the runs (`metrics.summarize`). With k-fold cross-validation a
  setting's runs are seeds x folds; fold runs share training data, so their CI is optimistic.
- Every setting is compared with the best setting of its stage (highest mean; lowest for
  `*_loss`) by Welch's two-sided t-test (`scipy.stats.ttest_ind(equal_var=False)`). Welch, not a
  paired test: settings that change shapes (batch size, architecture) see different data orders
  and initializations even at the same seed index, so there is nothing to pair; Welch does not
  assume equal variances and is valid (if conservative) inside a traced group too.
- p >= alpha (0.05) marks a setting "not significantly different from the best". With many
  settings a few raw p < 0.05 happen by chance, so the Holm-adjusted p (family = the stage's
  comparisons with its best) is shown alongside.
- Best-epoch metrics are taken at each run's epoch of highest validation accuracy; being a
  maximum over epochs on the same validation set they are optimistically biased.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from typing import Any, Sequence

import numpy as np

from cifar_jax.experiments import plots
from cifar_jax.experiments import stats
from cifar_jax.core import metrics
from cifar_jax.job import results as results_lib
from cifar_jax.job import storage
from cifar_jax.job import workdir as workdir_lib

SWEEP_FILE = "sweep.json"
ALPHA = 0.05
# (name, title): final-epoch metrics, best-epoch metrics (at the epoch of best val accuracy), test.
METRICS = (
    ("val_accuracy", "val accuracy, final epoch (%)"),
    ("best_val_accuracy", "val accuracy, best epoch (%)"),
    ("val_loss", "val loss, final epoch"),
    ("best_val_loss", "val loss, best epoch"),
    ("val_macro_f1", "val macro-F1, final epoch (%)"),
    ("best_val_macro_f1", "val macro-F1, best epoch (%)"),
    ("test_accuracy", "test accuracy, final epoch (%)"),
    ("test_loss", "test loss, final epoch"),
    ("test_macro_f1", "test macro-F1, final epoch (%)"),
)
_TITLES = dict(METRICS)
# Run identification fields of results.json / metrics.jsonl rows: not metrics.
_ID_FIELDS = {"epoch", "run", "seed_index", "setting", "fold", "diverged"}
MARK_BEST, MARK_SAME, MARK_UNTESTED = "★", "≈", "?"


# ----------------------------------------------------------------------------- values and names

format_value = plots.format_value


def path_name(text: str) -> str:
    """A file-system-safe version of a label ('conv_features[0]=32' -> 'conv_features0=32')."""
    return re.sub(r"[^A-Za-z0-9._,=+-]", "_", text.replace("[", "").replace("]", "")) or "_"




display_scale = plots.display_scale


# ----------------------------------------------------------------------------- statistics

def compare_to_best(samples: Sequence[Sequence[float]], lower_is_better: bool,
                    alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Per sample: is it the best (by mean), Welch p against the best, Holm p, and its mark."""
    means = [stats.mean(s) for s in samples]
    scores = [-m if lower_is_better else m for m in means]
    if all(math.isnan(m) for m in scores):
        return [{"best": False, "p": math.nan, "p_holm": math.nan, "mark": ""} for _ in samples]
    best = int(np.nanargmax(scores))
    p = [math.nan if i == best else stats.welch_p(s, samples[best]) for i, s in enumerate(samples)]
    p_holm = stats.holm(p)
    out = []
    for i in range(len(samples)):
        if i == best:
            mark = MARK_BEST
        elif math.isnan(p[i]):
            mark = MARK_UNTESTED if not math.isnan(means[i]) else ""
        else:
            mark = MARK_SAME if p[i] >= alpha else ""
        out.append({"best": i == best, "p": p[i], "p_holm": p_holm[i], "mark": mark})
    return out


# ----------------------------------------------------------------------------- loading results

@dataclasses.dataclass
class Setting:
    """One swept setting with its runs (seeds, and folds with cross-validation)."""

    label: str
    group: str
    stage: int
    values: dict[str, Any]  # every swept field -> this setting's value
    runs: list[dict[str, Any]]  # results.json rows, best-epoch metrics added
    curves: dict[str, np.ndarray]  # metric -> (epochs, runs) array, same run order as `runs`

    @property
    def num_diverged(self) -> int:
        return sum(bool(run.get("diverged")) for run in self.runs)

    @property
    def kept(self) -> np.ndarray:
        """Mask of runs that enter the statistics: not diverged, and not marked collapsed (a study
        report marks runs stuck at chance, `cifar_jax.experiments.study.annotate`)."""
        return np.array([not run.get("diverged") and not run.get("collapsed") for run in self.runs], dtype=bool)

    def sample(self, metric: str) -> np.ndarray:
        """The metric over the kept runs (NaN where a run lacks it)."""
        values = [run.get(metric) for run, keep in zip(self.runs, self.kept) if keep]
        return np.array([math.nan if v is None else float(v) for v in values])


def _matches(grid: dict[str, Any], stored: dict[str, Any]) -> bool:
    return set(grid) <= set(stored) and all(
        math.isclose(float(stored[k]), float(v), rel_tol=1e-9, abs_tol=0.0) for k, v in grid.items())


def read_jsonl(path: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (storage.read_text(path) or "").splitlines() if line.strip()]
    latest = {(row["epoch"], row["run"]): row for row in rows}  # a resumed run may repeat lines
    return [latest[key] for key in sorted(latest)]


def run_curves(rows: list[dict[str, Any]], run_ids: list[int]) -> dict[str, np.ndarray]:
    """Per scalar metric, an (epochs, runs) array from metrics.jsonl rows (NaN where missing)."""
    if not rows:
        return {}
    epochs = sorted({row["epoch"] for row in rows})
    position = {run: i for i, run in enumerate(run_ids)}
    names = sorted({k for row in rows for k, v in row.items()
                    if k not in _ID_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)})
    curves = {name: np.full((len(epochs), len(run_ids)), np.nan) for name in names}
    for row in rows:
        if row["run"] in position:
            for name in names:
                value = row.get(name)
                if isinstance(value, (int, float)):
                    curves[name][epochs.index(row["epoch"]), position[row["run"]]] = value
    return curves


def add_best_epoch(runs: list[dict[str, Any]], curves: dict[str, np.ndarray], metric: str = "val_accuracy") -> None:
    """Adds best_epoch and best_val_{accuracy,loss,macro_f1} at each run's best epoch by `metric`
    (the run's checkpoint.best_metric), the same rule as results.json and the best checkpoint.

    From metrics.jsonl when it has the epochs; otherwise keeps what results.json already holds.
    """
    best = results_lib.best_epoch_metrics(curves, metric)
    for i, run in enumerate(runs):
        if best and not np.all(np.isnan(np.asarray(curves[metric])[:, i])):
            run.update({name: (int if name == "best_epoch" else float)(values[i]) for name, values in best.items()})


def load_group(workdir: str, group: dict[str, Any]) -> list[Setting] | None:
    """The settings of one finished group (None while its results.json does not exist)."""
    group_dir = os.path.join(workdir, group["name"])
    results = workdir_lib.load_json(group_dir, "results.json")
    if results is None:
        return None
    return group_settings(group, results, read_jsonl(os.path.join(group_dir, "metrics.jsonl")))


def group_settings(group: dict[str, Any], results: dict[str, Any], rows: list[dict[str, Any]]) -> list[Setting]:
    """A group's settings from its results.json and metrics.jsonl rows (as files or as evidence)."""
    stored_settings = results.get("settings") or [{}]
    settings = []
    for spec in group["settings"]:
        indices = [i for i, stored in enumerate(stored_settings) if _matches(spec["grid"], stored)]
        runs = [dict(run) for run in results["runs"] if run.get("setting", 0) in indices]
        curves = run_curves([r for r in rows if r.get("setting", 0) in indices], [run["run"] for run in runs])
        add_best_epoch(runs, curves, results.get("best_metric", "val_accuracy"))
        settings.append(Setting(label=spec["label"], group=group["name"], stage=group["stage"],
                                values=dict(spec["values"]), runs=runs, curves=curves))
    return settings


def load_settings(workdir: str, groups: list[dict[str, Any]]) -> list[Setting]:
    """All settings of the finished groups, in the sweep's order."""
    loaded = [load_group(workdir, group) for group in groups]
    return [setting for settings in loaded if settings for setting in settings]


def read_sweep(workdir: str) -> dict[str, Any]:
    return workdir_lib.load_json(workdir, SWEEP_FILE)


# ----------------------------------------------------------------------------- tables

def metric_names(settings: Sequence[Setting]) -> list[str]:
    """The METRICS that at least one run reports, in METRICS order."""
    present = {k for s in settings for run in s.runs for k, v in run.items() if isinstance(v, (int, float))}
    return [name for name, _ in METRICS if name in present]


def stage_rows(settings: Sequence[Setting], metric: str, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """One row per setting of one stage: statistics of `metric` and the comparison with the best."""
    samples = [s.sample(metric) for s in settings]
    comparison = compare_to_best(samples, results_lib.lower_is_better(metric), alpha)
    rows = []
    for setting, sample, cmp in zip(settings, samples, comparison):
        summary = metrics.summarize(sample)
        rows.append({"stage": setting.stage, "setting": setting.label, "group": setting.group,
                     "metric": metric, "n": summary["n"], "diverged": setting.num_diverged,
                     "mean": summary["mean"], "std": summary["std"], "ci_low": summary["ci_low"],
                     "ci_high": summary["ci_high"], **cmp, "not_different": cmp["mark"] == MARK_SAME})
    return rows


def table_rows(settings: Sequence[Setting], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Long-format rows for every stage, setting and metric (the content of results.csv)."""
    rows = []
    for stage in sorted({s.stage for s in settings}):
        members = [s for s in settings if s.stage == stage]
        for metric in metric_names(members):
            rows.extend(stage_rows(members, metric, alpha))
    return rows


def write_csv(path: str, rows: list[dict[str, Any]], settings: Sequence[Setting]) -> None:
    """results.csv: the rows plus one column per swept field."""
    fields = list(dict.fromkeys(k for s in settings for k in s.values))
    values = {(s.stage, s.label): s.values for s in settings}
    header = ["stage", "setting", "group", *fields, "metric", "n", "diverged", "mean", "std", "ci_low",
              "ci_high", "best", "p", "p_holm", "not_different"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        swept = {k: format_value(v) for k, v in values[(row["stage"], row["setting"])].items()}
        writer.writerow({**row, **swept, "stage": row["stage"] + 1, "best": int(row["best"]),
                         "not_different": int(row["not_different"])})
    workdir_lib.write_text_atomic(path, text.getvalue())


def _number(value: float, metric: str, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * display_scale(metric):.{digits if display_scale(metric) > 1 else 4}f}"


def format_p(value: float) -> str:
    return "–" if math.isnan(value) else (f"{value:.3f}" if value >= 1e-3 else f"{value:.1e}")


def legend(alpha: float, primary: str, folds: bool) -> str:
    direction = "lowest" if results_lib.lower_is_better(primary) else "highest"
    text = (
        f"Each setting is trained over several seeds; statistics are over its runs that did not diverge "
        f"(**n**; **diverged** = runs with a NaN/inf loss, excluded and counted). **95% CI** is Student-t. "
        f"{MARK_BEST} = best setting of its stage by mean ({direction} "
        f"for `{primary}`); {MARK_SAME} = *not* significantly different from the best "
        f"(Welch's t-test, two-sided, p ≥ {alpha}); no mark = significantly worse (p < {alpha}); "
        f"{MARK_UNTESTED} = fewer than 2 runs, not testable. **p (Holm)** corrects for comparing several "
        "settings with the same best. Best-epoch metrics are at each run's epoch of highest val accuracy "
        "(a maximum over epochs: optimistic). Accuracy and macro-F1 are in %.")
    if folds:
        text += (" With k-fold cross-validation a setting's runs are seeds × folds with a fresh "
                 "initialization per fold; folds share training data, so the CI is optimistic.")
    return text


def markdown_stage(settings: Sequence[Setting], primary: str, alpha: float) -> list[str]:
    """The tables of one stage: the primary metric in full, then every metric as mean [CI]."""
    rows = stage_rows(settings, primary, alpha)
    lines = [f"Comparison metric: **{_TITLES[primary]}**", "",
             "| setting | n | diverged | mean | std | 95% CI | p vs best | p (Holm) | |",
             "|---|---:|---:|---:|---:|---|---:|---:|:-:|"]
    for row in rows:
        ci = f"[{_number(row['ci_low'], primary)}, {_number(row['ci_high'], primary)}]"
        lines.append(f"| {row['setting']} | {row['n']} | {row['diverged']} | {_number(row['mean'], primary)} | "
                     f"{_number(row['std'], primary)} | {ci} | {format_p(row['p'])} | {format_p(row['p_holm'])} | "
                     f"{row['mark']} |")
    epochs = max((c.shape[0] for s in settings for c in s.curves.values()), default=0)
    names = [n for n in metric_names(settings) if epochs > 1 or not n.startswith("best_")]  # 1 epoch: same
    by_metric = {name: stage_rows(settings, name, alpha) for name in names}
    lines += ["", "| setting | " + " | ".join(_TITLES[n] for n in names) + " |",
              "|---|" + "---:|" * len(names)]
    for i, setting in enumerate(settings):
        cells = []
        for name in names:
            row = by_metric[name][i]
            cells.append(f"{_number(row['mean'], name)} [{_number(row['ci_low'], name)}, "
                         f"{_number(row['ci_high'], name)}] {row['mark']}".rstrip())
        lines.append(f"| {setting.label} | " + " | ".join(cells) + " |")
    if any("fold" in run for s in settings for run in s.runs):
        lines += [""] + fold_table(settings, primary)
    return lines


def fold_table(settings: Sequence[Setting], metric: str) -> list[str]:
    """Mean of `metric` per fold: with fresh initializations it should not drift fold after fold."""
    folds = sorted({int(run["fold"]) for s in settings for run in s.runs if "fold" in run})
    lines = ["| setting | " + " | ".join(f"fold {k}" for k in folds) + " |", "|---|" + "---:|" * len(folds)]
    for s in settings:
        cells = []
        for k in folds:
            values = stats.finite(run.get(metric, math.nan) for run in s.runs if run.get("fold") == k and not run.get("diverged"))
            cells.append(_number(float(values.mean()), metric) if values.size else "–")
        lines.append(f"| {s.label} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(sweep: dict[str, Any], settings: Sequence[Setting], pending: Sequence[str]) -> str:
    """results.md: a header saying what was swept, the legend, and one section per stage."""
    primary, alpha = sweep.get("metric", "val_accuracy"), sweep.get("alpha", ALPHA)
    folds = any("fold" in run for s in settings for run in s.runs)
    axes = ", ".join(f"`{field}` ∈ {{{', '.join(format_value(v) for v in values)}}}" for field, values in sweep["axes"])
    lines = [f"# Sweep `{sweep.get('name', '')}`", "",
             f"Kind **{sweep['kind']}** over {axes or 'no axes'}"
             + (f", constraints: {'; '.join(f'`{c}`' for c in sweep['constraints'])}" if sweep.get("constraints") else "")
             + f"; {sweep.get('num_seeds', '?')} seeds, {sweep.get('num_epochs', '?')} epoch(s) per run.",
             "", legend(alpha, primary, folds), ""]
    for stage in sorted({s.stage for s in settings}):
        members = [s for s in settings if s.stage == stage]
        if sweep["kind"] == "one_factor":
            field = sweep["axes"][stage][0]
            lines += [f"## Stage {stage + 1}: `{field}`", ""]
            earlier = {f: sweep["chosen"][f] for f, _ in sweep["axes"][:stage] if f in sweep.get("chosen", {})}
            if earlier:
                lines += ["Carried over: " + ", ".join(f"`{f}`={format_value(v)}" for f, v in earlier.items()), ""]
        lines += markdown_stage(members, primary, alpha) + [""]
        if sweep["kind"] == "one_factor" and field in sweep.get("chosen", {}):
            lines += [f"Chosen: `{field}`={format_value(sweep['chosen'][field])} (best mean `{primary}`).", ""]
    if pending:
        lines += ["Not finished yet: " + ", ".join(f"`{name}`" for name in pending), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tensorboard

def write_tensorboard(root: str, settings: Sequence[Setting]) -> list[str]:
    """One TensorBoard run per setting: hyperparameters and per-epoch means over kept runs."""
    from clu import metric_writers  # imports TensorFlow: only when a report is written

    written = []
    for setting in settings:
        logdir = os.path.join(root, path_name(f"{setting.stage + 1}-{setting.label}"))
        storage.path(logdir).rmtree(missing_ok=True)  # the report is regenerated from the results each time
        writer = metric_writers.SummaryWriter(logdir)
        hparams = {k: (v if isinstance(v, (int, float)) and not isinstance(v, bool) else format_value(v))
                   for k, v in setting.values.items()}
        writer.write_hparams({**hparams, "group": setting.group})
        for name, curve in setting.curves.items():
            kept = curve[:, setting.kept]
            for epoch in range(curve.shape[0]):
                if kept.shape[1] and not np.all(np.isnan(kept[epoch])):
                    writer.write_scalars(epoch + 1, {f"{name}/mean": float(np.nanmean(kept[epoch]))})
        writer.close()
        written.append(logdir)
    return written


# ----------------------------------------------------------------------------- everything

def write_report(workdir: str, *, tensorboard: bool = True) -> dict[str, Any]:
    """Writes results.csv, results.md, plots/ and tensorboard/ from the sweep's finished groups."""
    sweep = read_sweep(workdir)
    settings = load_settings(workdir, sweep["groups"])
    pending = [g["name"] for g in sweep["groups"]
               if not storage.exists(os.path.join(workdir, g["name"], "results.json"))]
    alpha, primary = sweep.get("alpha", ALPHA), sweep.get("metric", "val_accuracy")
    rows = table_rows(settings, alpha)
    paths = {"csv": os.path.join(workdir, "results.csv"), "markdown": os.path.join(workdir, "results.md"),
             "plots": []}
    write_csv(paths["csv"], rows, settings)
    workdir_lib.write_text_atomic(paths["markdown"], render_markdown(sweep, settings, pending))
    plot_dir = os.path.join(workdir, "plots")
    storage.makedirs(plot_dir)
    stages = sorted({s.stage for s in settings})
    for stage in stages:
        members = [s for s in settings if s.stage == stage]
        suffix = f"_stage{stage + 1}" if len(stages) > 1 or sweep["kind"] == "one_factor" else ""
        curves_path = os.path.join(plot_dir, f"learning_curves{suffix}.png")
        title = sweep.get("name", "") + (f", stage {stage + 1}" if suffix else "")
        if plots.plot_learning_curves(curves_path, members, title):
            paths["plots"].append(curves_path)
        fields = [sweep["axes"][stage][0]] if sweep["kind"] == "one_factor" else [f for f, _ in sweep["axes"]]
        for field in fields:
            if primary in metric_names(members):
                axis_path = os.path.join(plot_dir, f"sweep_{path_name(field)}.png")
                plots.plot_axis(axis_path, members, stage_rows(members, primary, alpha), field, primary, alpha)
                paths["plots"].append(axis_path)
    if tensorboard and settings:
        paths["tensorboard"] = write_tensorboard(os.path.join(workdir, "tensorboard"), settings)
    return paths
