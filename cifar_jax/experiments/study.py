"""Studies: a study config lists experiments (each a sweep); `run_study` trains them and writes a
report that puts the study's own numbers beside ours and gives each of its claims a verdict.

A study config (`configs/studies/*.py:get_config(scale)`, scale full | cpu | smoke) holds

    config.seed, config.num_seeds, config.data.*   shared by every experiment (`SHARED_FIELDS` are
                                                   copied into each one when the study runs, so
                                                   --config.num_seeds=8 or --config.data.dir=D
                                                   apply to the whole study)
    config.study.{name, title, scale, config_path, source}
    config.experiments.<E4_1>                      `experiment(...)`: a sweep config in `.config`,
                                                   the study's numbers, `needs_full_scale`, `missing`
    config.claims.<C4_1>                           `claim(...)`: which settings one Welch test compares

`run_study(config, workdir)` trains experiment E into `workdir/E/` with `sweep.run_sweep`
(finished experiments are skipped, an interrupted one resumes group by group), then
`write_study_report` writes `workdir/report.md` and `workdir/plots/`; it only reads the
experiments' files, so `--mode=report` rebuilds it from whatever has finished.

Collapsed runs (a NaN/diverged loss, or a final train loss at ln 10 -- a uniform prediction -- or
above it, with chance validation accuracy) are counted and labelled, and never enter a mean: the
studies reported such runs (9-10%) as hyper-parameter effects.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import subprocess
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from cifar_jax.core import execution
from cifar_jax.core import metrics
from cifar_jax.job import progress
from cifar_jax.experiments import report
from cifar_jax.experiments import sweep
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.errors import ConfigError

SCALES = ("full", "cpu", "smoke")
# Top-level fields every experiment takes from the study: seeds, data source, data size.
SHARED_FIELDS = ("seed", "num_seeds", "data.dir", "data.source", "data.tfds_data_dir", "data.train_limit",
                 "data.test_limit", "data.val_size", "execution.distributed", "execution.coordinator_address",
                 "execution.num_processes", "execution.process_id")
STUDY_FILE = "study.json"
REPORT_FILE = "report.md"
LN10 = math.log(10.0)
COLLAPSE_TOLERANCE = 0.05  # a final train loss above ln 10 - this, at chance accuracy: the run predicts uniformly
CHANCE_ACCURACY = 0.11  # a reported accuracy at or below this (10 classes) is a collapse
ALPHA = report.ALPHA
EXPECTATIONS = ("greater", "less", "equal", "collapsed", "untested")
# Our metrics a study's number can be compared with. 'test_*' are read at each run's epoch of best
# validation accuracy (selection on validation only); without a test split they fall back to the
# final-epoch validation metric, and the table says so.
METRIC_TITLES = {
    "val_accuracy": "val acc, final epoch",
    "best_val_accuracy": "val acc, best epoch",
    "val_loss": "val loss, final epoch",
    "best_val_loss": "val loss at best-acc epoch",
    "train_loss": "train loss, final epoch",
    "train_accuracy": "train acc, final epoch",
    "test_accuracy": "test acc at val-selected epoch",
    "test_loss": "test loss at val-selected epoch",
    "val_macro_f1": "val macro-F1, final epoch",
    "best_val_macro_f1": "val macro-F1 at best-acc epoch",
    "dead_relu_fraction": "dead ReLU units, final epoch (% of units, mean over steps)",
}
_TEST_FALLBACK = {"test_accuracy": "val_accuracy", "test_loss": "val_loss"}
ANALYSES = ("", "gates", "output_correlation")
GRAD_NORMS = "grad_norm/*"  # as an experiment column: one column per layer's gradient norm (mean over steps)
STEP_METRICS = ("dead_relu_fraction", GRAD_NORMS)  # what steps.jsonl holds (log_step_metrics)


# ----------------------------------------------------------------------------- building configs

def check_scale(scale: str) -> str:
    """The config argument of a study: full | cpu | smoke (ConfigError otherwise)."""
    if scale not in SCALES:
        raise ConfigError(f"study scale {scale!r} is unknown; use :{' | :'.join(SCALES)}")
    return scale


def by_scale(scale: str, full: Any, cpu: Any, smoke: Any) -> Any:
    """The value for this scale: study configs write every scale-dependent choice in one line."""
    return {"full": full, "cpu": cpu, "smoke": smoke}[check_scale(scale)]


def study_config(*, name: str, title: str, scale: str, config_path: str, source: str, num_seeds: int,
                 data_dir: str, train_limit: int, val_size: float, execution: ml_collections.ConfigDict,
                 test_limit: int = 0) -> ml_collections.ConfigDict:
    """The top level of a study config: the SHARED_FIELDS every experiment takes, and `study`.
    `execution` is the project's default execution section (configs/default.py): its multi-host
    fields (`execution.distributed`, ...) are set once for the whole study, before JAX starts.
    Experiments and claims are added by the caller (`config.experiments.K = experiment(...)`); they
    run and are reported in key order (a ConfigDict sorts its keys: 'E0_02' keeps E0.2 before E0.10)."""
    config = ml_collections.ConfigDict()
    config.name = f"study_{name}"
    config.seed = 0
    config.num_seeds = num_seeds
    config.execution = execution.copy_and_resolve_references()
    config.data = ml_collections.ConfigDict({"dir": data_dir, "source": "auto", "tfds_data_dir": "",
                                             "train_limit": train_limit, "test_limit": test_limit,
                                             "val_size": float(val_size)})
    config.study = ml_collections.ConfigDict({"name": name, "title": title, "scale": check_scale(scale),
                                              "config_path": config_path, "source": source})
    config.experiments = ml_collections.ConfigDict()
    config.claims = ml_collections.ConfigDict()
    return config


def experiment(config: ml_collections.ConfigDict, *, ids: Sequence[str], title: str, kind: str = "grid",
               axes: Sequence[tuple[str, Sequence[Any]]] = (), labels: Sequence[str] = (),
               reported: Sequence[tuple[str, float, str, str]] = (), metric: str = "val_accuracy",
               needs_full_scale: bool = False, missing: str = "", torch_images_per_s: float = 0.0,
               figure: str = "", columns: Sequence[str] = (), curves: Sequence[str] = (),
               analysis: str = "", fold_reference: str = "", step_curves: Sequence[str] = ()
               ) -> ml_collections.ConfigDict:
    """One experiment of a study: `config` (a training config) swept over `axes`.

    `ids`: the STUDIES.md experiments (E4.1, ...) or flaws (F4.5) it reproduces.

    `reported`: the study's numbers as (setting label, value as the study printed it (% for
    accuracies), where it was read (split, epoch), our metric to compare with, a METRIC_TITLES key).
    `missing`: why this code cannot run the experiment (listed in the report, never faked).
    `torch_images_per_s`: PyTorch's measured training rate for this model and batch size, for the
    estimate of what the runs would cost one after another in PyTorch (0 = not measured).
    `columns`: more of our metrics (METRIC_TITLES keys) shown for every setting; `curves`: per-epoch
    metrics plotted as learning curves beside the accuracy curves (e.g. train_loss, val_loss);
    `analysis`: 'gates' adds the block CNN's learned branch weights per block (`analysis.gate_weights`),
    'output_correlation' the correlations of the output units (`analysis.output_correlation`);
    `fold_reference`: for an experiment whose settings are single cross-validation folds trained as
    a chain (`data.folds`, `init_from`), the key of the experiment that trained the same folds
    fresh; the report then puts both per fold side by side with the leak, their paired difference.
    """
    swept = config.copy_and_resolve_references()
    swept.sweep = ml_collections.ConfigDict({"kind": kind, "axes": tuple(axes), "constraints": (),
                                             "metric": metric, "alpha": ALPHA, "labels": tuple(labels)})
    return ml_collections.ConfigDict({
        "ids": tuple(ids), "title": title, "config": swept, "reported": tuple(tuple(r) for r in reported),
        "needs_full_scale": needs_full_scale, "missing": missing,
        "torch_images_per_s": float(torch_images_per_s), "figure": figure, "columns": tuple(columns),
        "curves": tuple(curves), "analysis": analysis, "fold_reference": fold_reference,
        "step_curves": tuple(step_curves)})


def claim(text: str, a: str = "", b: str = "", *, expect: str, metric: str = "val_accuracy",
          note: str = "") -> ml_collections.ConfigDict:
    """A claim and the one comparison that tests it: settings `a` and `b` as 'E4_1:label'.

    expect: greater (a > b) | less | equal (no difference) | collapsed (a's runs collapse) |
    untested (`note` says why no experiment here can test it). A tested claim's `note` is shown
    beside its test (e.g. which part of the claim the test leaves out).
    """
    return ml_collections.ConfigDict({"text": text, "a": a, "b": b, "expect": expect, "metric": metric,
                                      "note": note})


def display_id(key: str) -> str:
    """Claim keys: 'C0_02' -> 'C0.2', 'C4_2b' -> 'C4.2b' (config keys cannot hold dots; zero-padding keeps them in
    order, since ConfigDict sorts its keys)."""
    match = re.fullmatch(r"([A-Za-z]+\d+)_0*(\d+)(\w*)", key)
    return f"{match.group(1)}.{match.group(2)}{match.group(3)}" if match else key


# ----------------------------------------------------------------------------- reading configs

@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment, its sweep config with the study's shared fields applied."""

    key: str
    ids: tuple[str, ...]
    title: str
    config: ml_collections.ConfigDict
    reported: tuple[tuple[str, float, str, str], ...]
    needs_full_scale: bool
    missing: str
    torch_images_per_s: float
    figure: str
    columns: tuple[str, ...]
    curves: tuple[str, ...]
    analysis: str
    fold_reference: str
    step_curves: tuple[str, ...]

    @property
    def name(self) -> str:
        """'E4.1, E4.3: CNN ablations' (headings, progress lines)."""
        return f"{', '.join(self.ids)}: {self.title}"

    @property
    def runnable(self) -> bool:
        return not self.missing and not self.needs_full_scale

    @property
    def skip_reason(self) -> str:
        return f"missing: {self.missing}" if self.missing else ("needs :full scale" if self.needs_full_scale else "")


def experiments(config: ml_collections.ConfigDict) -> list[Experiment]:
    """The study's experiments in config order, each with SHARED_FIELDS copied from the top level."""
    if not isinstance(config.get("experiments"), ml_collections.ConfigDict) or not config.experiments:
        raise ConfigError("config.experiments is empty: --mode=study needs a study config (configs/studies/)")
    out = []
    for key, entry in config.experiments.items():
        swept = entry.config.copy_and_resolve_references()
        swept.name = f"{config.study.name}/{key}"
        for field in SHARED_FIELDS:
            sweep.set_field(swept, field, sweep.get_field(config, field))
        out.append(Experiment(key=key, ids=tuple(entry.ids), title=entry.title, config=swept,
                              reported=tuple(tuple(r) for r in entry.reported),
                              needs_full_scale=bool(entry.needs_full_scale), missing=entry.missing,
                              torch_images_per_s=float(entry.torch_images_per_s), figure=entry.figure,
                              columns=tuple(entry.columns), curves=tuple(entry.curves),
                              analysis=entry.analysis, fold_reference=entry.get("fold_reference", ""),
                              step_curves=tuple(entry.get("step_curves", ()))))
    return out


def validate(config: ml_collections.ConfigDict) -> list[Experiment]:
    """Expands and preflights every experiment, and checks that reported numbers and claims name
    existing settings: a typo fails before any training."""
    exps = experiments(config)
    labels = {}
    for exp in exps:
        try:
            groups = sweep.expand(exp.config)
            sweep.preflight(groups)
            for group in groups:
                check_group(group)
        except ConfigError as error:
            raise ConfigError(f"experiment {exp.key}: {error}") from None
        labels[exp.key] = [s.label for g in groups for s in g.settings]
        for label, _, _, metric in exp.reported:
            if label not in labels[exp.key]:
                raise ConfigError(f"experiment {exp.key}: reported setting {label!r} is not one of "
                                  f"{labels[exp.key]}")
            _check_metric(metric, f"experiment {exp.key}")
        for metric in exp.columns:
            _check_metric(metric, f"experiment {exp.key}", columns=True)
        for metric in exp.curves:
            _check_metric(metric, f"experiment {exp.key} curves")
        for metric in exp.step_curves:
            if metric not in STEP_METRICS:
                raise ConfigError(f"experiment {exp.key}: step curve {metric!r} is unknown; use one of "
                                  f"{', '.join(STEP_METRICS)}")
            if not exp.config.get("log_step_metrics", False):
                raise ConfigError(f"experiment {exp.key}: step_curves need log_step_metrics=True in its config")
        if exp.analysis not in ANALYSES:
            raise ConfigError(f"experiment {exp.key}: analysis={exp.analysis!r}; use one of {ANALYSES}")
        if exp.fold_reference and exp.fold_reference not in labels:
            raise ConfigError(f"experiment {exp.key}: fold_reference={exp.fold_reference!r} names no earlier "
                              "experiment of the study")
    for key, entry in config.get("claims", {}).items():
        if entry.expect not in EXPECTATIONS:
            raise ConfigError(f"claim {display_id(key)}: expect={entry.expect!r}; use one of {', '.join(EXPECTATIONS)}")
        _check_metric(entry.metric, f"claim {display_id(key)}")
        needed = {"untested": (), "collapsed": (entry.a,)}.get(entry.expect, (entry.a, entry.b))
        for ref in needed:
            exp_key, label = split_ref(ref)
            if label not in labels.get(exp_key, ()):
                raise ConfigError(f"claim {display_id(key)}: {ref!r} names no setting of the study "
                                  "(write settings as 'E4_1:label')")
    return exps


def check_group(group: sweep.Group) -> None:
    """Every static check a training job runs (`validation.validate_config`), now: a study must not
    fail in its twelfth experiment for a setting the first minute could have refused. The training
    set size is a lenient guess from data.train_limit (the data are not loaded here)."""
    from cifar_jax.data import datasets as data
    from cifar_jax.job import validation

    config = group.config
    name = data.check_name(config.data.name)
    val = config.data.val_size if config.data.val_size >= 1 and not config.data.num_folds else 0
    num_train = max(int(config.data.train_limit - val) if config.data.train_limit else 0, config.batch_size)
    try:
        validation.validate_config(config, data.IMAGE_SHAPES[name], len(data.CLASS_NAMES[name]), num_train)
    except ConfigError as error:
        raise ConfigError(f"group {group.name}: {error}") from None


def _check_metric(metric: str, where: str, columns: bool = False) -> None:
    if metric not in METRIC_TITLES and not (columns and metric == GRAD_NORMS):
        raise ConfigError(f"{where}: metric {metric!r} is unknown; use one of {', '.join(METRIC_TITLES)}")


def split_ref(ref: str) -> tuple[str, str]:
    """'E4_1:cnn' -> ('E4_1', 'cnn')."""
    exp_key, _, label = ref.partition(":")
    return exp_key, label


# ----------------------------------------------------------------------------- running

def experiment_done(exp: Experiment, exp_dir: str) -> bool:
    """Whether every group of the experiment has finished (the experiment is then skipped)."""
    return all(sweep.group_done(g, os.path.join(exp_dir, g.name)) for g in sweep.expand(exp.config))


def hardware() -> dict[str, Any]:
    """Where the runs trained: the report's protocol section quotes it."""
    import jax

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()]}


def code_version() -> str:
    """The commit of the code that trained ('+dirty' with uncommitted changes), for the report's
    header; 'unknown' outside a git checkout."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_study(config: ml_collections.ConfigDict, workdir: str,
              train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None) -> dict[str, Any]:
    """Trains every runnable experiment not finished yet, then writes report.md.

    Returns {'trained': experiment keys trained in this call, 'skipped': finished earlier,
    'report': path}.
    """
    exps = validate(config)
    os.makedirs(workdir, exist_ok=True)
    state = workdir_lib.load_json(workdir, STUDY_FILE) or {"sessions": []}
    session = {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "hardware": hardware(),
               "commit": code_version(), "wall_s": 0.0}
    state["sessions"].append(session)
    start, trained, skipped = time.time(), [], []

    def save_session() -> None:  # after every experiment (a SIGKILL loses one at most) and on any exit
        session["wall_s"] = time.time() - start
        if execution.is_primary():
            workdir_lib.write_json_atomic(os.path.join(workdir, STUDY_FILE), state)

    say = execution.primary_print
    try:
        for i, exp in enumerate(exps, start=1):
            exp_dir = os.path.join(workdir, exp.key)
            head = f"study: {i}/{len(exps)} {exp.key} ({exp.name})"
            if not exp.runnable:
                say(f"{head}: not run ({exp.skip_reason})")
            elif execution.primary_decides(lambda: experiment_done(exp, exp_dir)):
                say(f"{head}: finished earlier, skipped")
                skipped.append(exp.key)
            else:
                say(head)
                sweep.run_sweep(exp.config, exp_dir, train_fn=train_fn)
                trained.append(exp.key)
            save_session()
    finally:  # an interrupted session's time counts too (the report sums the sessions)
        save_session()
    execution.primary_decides(lambda: write_study_report(config, workdir) and 0)  # the same refusal everywhere
    path = os.path.join(workdir, REPORT_FILE)
    say(f"study: {path}")
    return {"trained": trained, "skipped": skipped, "report": path}


# ----------------------------------------------------------------------------- results

def is_collapsed(run: dict[str, Any]) -> bool:
    """A diverged run (NaN/inf loss), or one whose final train loss sits at ln 10 (uniform
    predictions) or above it (blown up but finite) while its validation accuracy, where known, is
    at chance. A run that is merely slow (loss 2.27 after one short epoch, 25% accuracy) is not."""
    loss = run.get("train_loss")
    if run.get("diverged") or (loss is not None and not math.isfinite(loss)):
        return True
    at_chance = run.get("val_accuracy") is None or run["val_accuracy"] <= CHANCE_ACCURACY
    return loss is not None and loss > LN10 - COLLAPSE_TOLERANCE and at_chance


def annotate(setting: report.Setting) -> None:
    """Marks collapsed runs (report.Setting.kept then leaves them out) and adds each run's test
    metrics at its epoch of best validation accuracy (`test_*_at_best`)."""
    for i, run in enumerate(setting.runs):
        run["collapsed"] = is_collapsed(run)
        epoch = run.get("best_epoch")
        for name in ("test_accuracy", "test_loss"):
            curve = setting.curves.get(name)
            if epoch is not None and curve is not None and curve.shape[0] >= epoch:
                run[f"{name}_at_best"] = float(curve[int(epoch) - 1, i])


def load_experiment(workdir: str, exp: Experiment) -> tuple[list[report.Setting], list[str], dict[str, Any]]:
    """(settings of its finished groups, names of unfinished groups, the sweep plan) of one
    experiment's directory; empty when it never started."""
    exp_dir = os.path.join(workdir, exp.key)
    if not os.path.exists(os.path.join(exp_dir, report.SWEEP_FILE)):
        return [], [g.name for g in sweep.expand(exp.config)], {}
    plan = report.read_sweep(exp_dir)
    settings = report.load_settings(exp_dir, plan["groups"])
    for setting in settings:
        annotate(setting)
    pending = [g["name"] for g in plan["groups"]
               if not os.path.exists(os.path.join(exp_dir, g["name"], "results.json"))]
    return settings, pending, plan


def resolve_metric(metric: str, settings: Sequence[report.Setting]) -> tuple[str, str]:
    """(the run field to read, its title): test metrics at the val-selected epoch when the data
    have a test split, else the final-epoch validation metric."""
    if metric.startswith("grad_norm/"):
        return metric, f"‖grad‖ {metric.split('/', 1)[1]}, final epoch (mean over steps)"
    if metric in _TEST_FALLBACK:
        if any(f"{metric}_at_best" in run for s in settings for run in s.runs):
            return f"{metric}_at_best", METRIC_TITLES[metric]
        fallback = _TEST_FALLBACK[metric]
        return fallback, f"{METRIC_TITLES[fallback]} (no test split)"
    return metric, METRIC_TITLES[metric]


def scale_of(metric: str) -> float:
    """Accuracies, F1 and dead-unit fractions are shown in %, losses and gradient norms as they are."""
    return 1.0 if report.minimize(metric) or metric.startswith(GRAD_NORMS[:-1]) else 100.0


def summary(setting: report.Setting, field: str) -> dict[str, Any]:
    """Mean, CI and n over the kept (not collapsed) runs, in display units."""
    stats = metrics.summarize(setting.sample(field))
    scale = scale_of(field)
    return {**stats, **{k: stats[k] * scale for k in ("mean", "std", "ci_low", "ci_high")},
            "collapsed": sum(bool(r.get("collapsed")) for r in setting.runs), "runs": len(setting.runs)}


def reported_collapse(value: float, metric: str) -> bool:
    """Whether the study's own number is a collapsed run (chance accuracy or a loss at ln 10)."""
    if report.minimize(metric):
        return value >= LN10 - COLLAPSE_TOLERANCE
    return "accuracy" in metric and value <= CHANCE_ACCURACY * 100


def row_verdict(value: float, metric: str, stats: dict[str, Any]) -> str:
    """The study's number against our seeds: within our 95% CI, outside it, or a collapse."""
    ours_collapsed = stats["collapsed"] and stats["n"] == 0
    if reported_collapse(value, metric):
        tail = "ours collapsed too" if ours_collapsed else f"ours: {stats['collapsed']}/{stats['runs']} collapsed"
        return f"the study's number was a collapse ({tail})"
    if stats["n"] == 0:
        return "ours: every run collapsed" if ours_collapsed else "no finished runs"
    if stats["n"] < 2:
        return "n = 1: no CI"
    if stats["ci_low"] <= value <= stats["ci_high"]:
        return "within our CI"
    return f"outside our CI (study {'higher' if value > stats['ci_high'] else 'lower'})"


# ----------------------------------------------------------------------------- claims

@dataclasses.dataclass
class ClaimResult:
    key: str
    text: str
    expect: str
    test: str = "–"
    verdict: str = ""  # empty for a comparison until the study's Holm adjustment is known
    p: float = math.nan
    p_holm: float = math.nan
    diff: float = math.nan  # mean of a minus mean of b, display units
    figure: str = ""


def _find(loaded: dict[str, list[report.Setting]], ref: str) -> report.Setting | None:
    exp_key, label = split_ref(ref)
    return next((s for s in loaded.get(exp_key, []) if s.label == label), None)


def judge_claim(key: str, entry: ml_collections.ConfigDict, loaded: dict[str, list[report.Setting]],
                skipped: dict[str, str]) -> ClaimResult:
    """One claim's test: a collapse count, or a Welch p-value whose verdict waits for Holm."""
    result = ClaimResult(key=key, text=entry.text, expect=entry.expect)
    exp_keys = list(dict.fromkeys(split_ref(r)[0] for r in (entry.a, entry.b) if r))
    blocked = [f"{k} {skipped[k]}" for k in exp_keys if k in skipped]
    a, b = (_find(loaded, entry.a) if entry.a else None), (_find(loaded, entry.b) if entry.b else None)
    if entry.expect == "untested":
        result.verdict = f"not tested: {entry.note}"
    elif blocked:
        result.verdict = f"not tested here: {'; '.join(blocked)}"
    elif a is None or (entry.expect != "collapsed" and b is None):
        result.verdict = "not tested yet: its runs have not finished"
    elif entry.expect == "collapsed":
        collapsed = sum(bool(r.get("collapsed")) for r in a.runs)
        result.test = f"collapse check of `{entry.a}` (train loss at or above ln 10 at chance accuracy, or NaN)"
        result.verdict = ("supported" if collapsed == len(a.runs) else "refuted" if collapsed == 0 else
                          "partly") + f": {collapsed}/{len(a.runs)} runs collapsed"
    else:
        field, title = resolve_metric(entry.metric, [a, b])
        sa, sb = summary(a, field), summary(b, field)
        unit = "" if report.minimize(field) else "%"
        result.test = (f"Welch, {title}: `{entry.a}` {_fmt(sa['mean'])}{unit} (n={sa['n']}) vs `{entry.b}` "
                       f"{_fmt(sb['mean'])}{unit} (n={sb['n']})")
        result.p, result.diff = report.welch_p(a.sample(field), b.sample(field)), sa["mean"] - sb["mean"]
        if math.isnan(result.p):
            result.verdict = "not testable: fewer than 2 non-collapsed runs on a side"
    if entry.note and entry.expect != "untested":
        result.test += f" ({entry.note})"
    return result


def judge_claims(config: ml_collections.ConfigDict, loaded: dict[str, list[report.Setting]],
                 skipped: dict[str, str], figures: dict[str, str]) -> list[ClaimResult]:
    """One verdict per claim; the Welch p-values of all tested claims are Holm-adjusted together."""
    results = []
    for key, entry in config.get("claims", {}).items():
        result = judge_claim(key, entry, loaded, skipped)
        exp_keys = dict.fromkeys(split_ref(r)[0] for r in (entry.a, entry.b) if r)
        result.figure = ", ".join(figures[k] for k in exp_keys if k in figures)
        results.append(result)
    tested = [r for r in results if not math.isnan(r.p)]
    for r, adjusted in zip(tested, report.holm([r.p for r in tested])):
        r.p_holm = adjusted
        r.verdict = compare_verdict(r.expect, r.diff, adjusted)
    return results


def verdict_counts(claims: Sequence[ClaimResult]) -> str:
    """'Claims: 2 supported, 1 refuted, 4 not distinguishable from seed noise, 3 not tested.'"""
    kinds = {"supported, weakly": "weakly supported (no difference found)", "supported": "supported",
             "refuted": "refuted", "not distinguishable": "not distinguishable from seed noise",
             "partly": "partly supported", "not test": "not tested"}
    first = [next((name for prefix, name in kinds.items() if c.verdict.startswith(prefix)), "other") for c in claims]
    counts = {name: first.count(name) for name in [*kinds.values(), "other"]}
    return "Claims: " + ", ".join(f"{n} {name}" for name, n in counts.items() if n) + "."


def compare_verdict(expect: str, diff: float, p_holm: float, alpha: float = ALPHA) -> str:
    """supported / refuted / not distinguishable from seed noise, for an expected direction. A
    'no difference' claim is only ever weakly supported: a non-significant test at a few seeds is
    absence of evidence, and the verdict says so."""
    if p_holm >= alpha:
        return ("supported, weakly: no difference beyond seed noise at these seeds (not evidence of no effect)"
                if expect == "equal" else "not distinguishable from seed noise")
    if expect == "equal":
        return "refuted (the difference is significant)"
    return "supported" if (diff > 0) == (expect == "greater") else "refuted (significant, opposite direction)"


# ----------------------------------------------------------------------------- the report

def _fmt(value: float, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "–" if math.isnan(value) else (f"{value:.3f}" if value >= 1e-3 else f"{value:.1e}")


def experiment_table(exp: Experiment, settings: Sequence[report.Setting]) -> list[str]:
    """setting | the study's number | ours | collapsed | verdict | exp.columns; one row per
    reported number (settings the study did not report get one row on the experiment's metric)."""
    extra = [resolve_metric(m, settings) for m in expand_columns(exp.columns, settings)]
    lines = ["| setting | the study's number (split, epoch) | ours: mean ± 95% CI (n) | collapsed | verdict |"
             + "".join(f" ours: {title} |" for _, title in extra),
             "|---|---|---|---:|---|" + "---:|" * len(extra)]
    primary = exp.config.sweep.metric
    for setting in settings:
        entries = [r for r in exp.reported if r[0] == setting.label] or [(setting.label, math.nan, "–", primary)]
        for _, value, where, metric in entries:
            field, title = resolve_metric(metric, settings)
            stats = summary(setting, field)
            study_text = "–" if math.isnan(value) else f"{value:g} ({where})"
            verdict = "–" if math.isnan(value) else row_verdict(value, field, stats)
            lines.append(f"| {setting.label} | {study_text} | {_mean_ci(stats)} — {title} | "
                         f"{stats['collapsed']}/{stats['runs']} | {verdict} |"
                         + "".join(f" {_mean_ci(summary(setting, f))} |" for f, _ in extra))
    return lines


def expand_columns(columns: Sequence[str], settings: Sequence[report.Setting]) -> list[str]:
    """GRAD_NORMS becomes the per-layer gradient-norm fields the runs report, in layer order."""
    layers = list(dict.fromkeys(k for s in settings for run in s.runs for k in run if k.startswith("grad_norm/")))
    return [name for column in columns for name in (layers if column == GRAD_NORMS else [column])]


def _mean_ci(stats: dict[str, Any]) -> str:
    """'61.20 ± 0.85 (5)': mean ± the 95% CI's half-width (n)."""
    return f"{_fmt(stats['mean'])} ± {_fmt(stats['ci_high'] - stats['mean'])} ({stats['n']})"


def group_analysis(workdir: str, exp: Experiment, group: dict[str, Any]) -> dict[str, Any] | None:
    """A finished group's `exp.analysis` (a function of `cifar_jax.experiments.analysis` on its best
    checkpoint), computed once and cached in workdir/analysis/<experiment>/<group>.json; None
    while the group has not finished."""
    from cifar_jax.experiments import analysis

    group_dir = os.path.join(workdir, exp.key, group["name"])
    if not os.path.exists(os.path.join(group_dir, "results.json")):
        return None
    cache = os.path.join(workdir, "analysis", exp.key, f"{report.path_name(group['name'])}.json")
    cached = workdir_lib.load_json(*os.path.split(cache))
    if cached is None:
        run = {"gates": analysis.gate_weights, "output_correlation": analysis.output_correlation}[exp.analysis]
        cached = run(group_dir)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        workdir_lib.write_json_atomic(cache, cached)
    return cached


def analysis_rows(workdir: str, exp: Experiment, plan: dict[str, Any]) -> tuple[list[tuple[str, list[dict]]], int]:
    """([(setting label, its runs' analysis records)], images analysed) over the finished groups."""
    rows, num_images = [], 0
    for group in plan["groups"]:
        result = group_analysis(workdir, exp, group)
        if result is not None:
            num_images = result["num_images"]
            rows += [(spec["label"], [r for r in result["runs"] if r["setting"] == index])
                     for index, spec in enumerate(group["settings"])]
    return rows, num_images


def _mean_sd(values: Sequence[float], digits: int = 3) -> str:
    values = np.asarray(values, np.float64)
    return f"{values.mean():.{digits}f} ± {_fmt(values.std(ddof=1) if values.size > 1 else math.nan, digits)}"


def gate_table(workdir: str, exp: Experiment, plan: dict[str, Any]) -> list[str]:
    """setting | block | a_1 ... a_K (mean ± sd over seeds of the mean over validation images)."""
    settings, num_images = analysis_rows(workdir, exp, plan)
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


def correlation_table(workdir: str, exp: Experiment, plan: dict[str, Any]) -> list[str]:
    """setting | mean, sd of the output-unit correlation matrix with and without its diagonal."""
    settings, num_images = analysis_rows(workdir, exp, plan)
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


def leak_table(leaky: Sequence[report.Setting], correct: Sequence[report.Setting], reference: str) -> list[str]:
    """Chained (leaky) vs fresh (correct) k-fold CV, final-epoch validation accuracy: each fold's mean
    over seeds, and the mean over folds per seed, whose paired difference (same seed, same folds)
    is the leak: how much a fold's score rises because an earlier fold trained on its images."""
    values = {"correct": fold_values(correct), "leaky": fold_values(leaky)}
    folds = sorted({fold for fold, _ in values["leaky"]})
    seeds = sorted({seed for _, seed in values["leaky"]} & {seed for _, seed in values["correct"]})
    complete = [s for s in seeds if all((f, s) in v for v in values.values() for f in folds)]
    if not folds or not complete:
        return []
    diff = {key: values["leaky"][key] - values["correct"][key] for key in values["leaky"] if key in values["correct"]}
    rows = [("correct: every fold freshly initialised (`" + reference + "`)", values["correct"]),
            ("leaky: fold k starts from fold k−1's trained weights", values["leaky"]),
            ("**leak** (leaky − correct, paired by seed)", diff)]

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


def axis_fields(plan: dict[str, Any]) -> list[str]:
    """The swept fields worth a metric-vs-value chart: every axis of a grid; of a zip, the first
    axis when its values tell the settings apart (batch sizes, widths; not a BN on/off ablation)."""
    axes = plan.get("axes", [])
    if plan.get("kind") == "grid":
        return [field for field, _ in axes]
    if plan.get("kind") == "zip" and axes and len({repr(v) for v in axes[0][1]}) == len(axes[0][1]) > 1:
        return [axes[0][0]]
    return []


def experiment_plots(workdir: str, exp: Experiment, settings: Sequence[report.Setting],
                     plan: dict[str, Any]) -> list[str]:
    """Learning curves and metric-vs-value charts (report.py's plots), paths relative to workdir."""
    plot_dir = os.path.join(workdir, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    written = []
    for curve in (None, *exp.curves):
        name = f"plots/{exp.key}_{curve + '_' if curve else ''}curves.png"
        if report.plot_learning_curves(os.path.join(workdir, name), settings, exp.name, metric=curve):
            written.append(name)
    for curve in exp.step_curves:
        name = f"plots/{exp.key}_{'grad_norm' if curve == GRAD_NORMS else curve}_steps.png"
        if plot_steps(os.path.join(workdir, name), os.path.join(workdir, exp.key), settings, curve, exp.name):
            written.append(name)
    metric = plan.get("metric", "val_accuracy")
    if any(s.sample(metric).size for s in settings):
        for field in axis_fields(plan):
            name = f"plots/{exp.key}_{report.path_name(field)}.png"
            report.plot_axis(os.path.join(workdir, name), settings, field, metric, plan.get("alpha", ALPHA))
            written.append(name)
    return written


def step_series(exp_dir: str, setting: report.Setting, metric: str, collapsed: bool = False
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(training steps, values (records, runs)) of one setting's steps.jsonl metric over its kept
    runs, or over its collapsed ones; None without them."""
    records = [r for r in progress.read_steps(os.path.join(exp_dir, setting.group)) if metric in r]
    columns = [run["run"] for run, kept in zip(setting.runs, setting.kept) if kept != collapsed]
    if not records or not columns:
        return None
    return (np.array([r["step"] for r in records]),
            np.array([[r[metric][c] for c in columns] for r in records], np.float64) * scale_of(metric))


def plot_steps(path: str, exp_dir: str, settings: Sequence[report.Setting], curve: str, title: str) -> bool:
    """The dead-ReLU fraction (one panel), or every layer's gradient norm (a log panel per layer),
    against the training step, one line per setting. Collapsed runs, left out of every mean, are
    dashed lines of their own: where units die they are the diagnosis."""
    def series(name: str) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
        out = []
        for s in settings:
            for collapsed in (False, True):
                found = step_series(exp_dir, s, name, collapsed)
                if found:
                    label = f"{s.label}, collapsed ({found[1].shape[1]})" if collapsed else s.label
                    out.append((label, *found, collapsed))
        return out

    panels = {name: series(name) for name in expand_columns((curve,), settings)}
    ylabel = "dead ReLU units (%)" if curve == "dead_relu_fraction" else "‖grad‖ (per layer)"
    return report.plot_step_panels(path, panels, ylabel, title, log=curve == GRAD_NORMS)


def protocol_rows(workdir: str, exp: Experiment, plan: dict[str, Any]) -> dict[str, Any]:
    """Split sizes, epochs, runs, wall time and PyTorch's estimated time for one experiment."""
    exp_dir = os.path.join(workdir, exp.key)
    out = {"train": set(), "epochs": set(), "runs": 0, "wall_s": 0.0, "images": 0, "test": False}
    for group in plan.get("groups", []):
        group_dir = os.path.join(exp_dir, group["name"])
        results = workdir_lib.load_json(group_dir, "results.json")
        data_meta = workdir_lib.load_json(group_dir, workdir_lib.DATA_FILE)
        stored = workdir_lib.load_json(group_dir, workdir_lib.CONFIG_FILE)
        if results is None or data_meta is None or stored is None:
            continue
        num_train, batch = data_meta["num_train"], stored["batch_size"]
        out["train"].add(num_train)
        out["epochs"].add(results["num_epochs"])
        out["runs"] += results["num_runs"]
        out["wall_s"] += results.get("wall_time_s", 0.0)
        out["images"] += results["num_runs"] * results["num_epochs"] * (num_train // batch) * batch
        out["test"] |= any("test_accuracy" in run for run in results["runs"])
    return out


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 3600:.1f} h"


def _rate(images: int, seconds: float) -> str:
    """Training images of all runs per second of wall time (compiles and evaluation included)."""
    return f"{images / seconds:,.0f}" if images and seconds else "–"


def protocol_section(config: ml_collections.ConfigDict, workdir: str, exps: Sequence[Experiment],
                     plans: dict[str, dict[str, Any]]) -> list[str]:
    """Splits, selection, seeds, scale, hardware, wall time and the PyTorch estimate."""
    state = workdir_lib.load_json(workdir, STUDY_FILE) or {"sessions": []}
    sessions = state["sessions"]
    lines = ["## Protocol", "",
             f"- **Scale** `:{config.study.scale}`; **seeds** {config.num_seeds} per setting (seed i of every "
             f"setting starts from the same key); data `{config.data.dir or 'tfds'}`, "
             f"train_limit {config.data.train_limit or 'all'}, validation {config.data.val_size:g} images carved from "
             "train (class-balanced, fixed by data.seed).",
             "- **Selection on validation only**: best-epoch numbers are each run's epoch of highest validation "
             "accuracy; test metrics are reported only at that validation-selected epoch and select nothing "
             "(the training core evaluates the test split every epoch; the report reads one epoch of it). "
             "Where the data have no test split (the shared CIFAR-10 JPEG images), test columns fall back to "
             "the final-epoch validation metric and say so.",
             f"- **Collapsed runs**: a NaN/diverged loss, or a final train loss at ln 10 = {LN10:.3f} (within "
             f"{COLLAPSE_TOLERANCE}) or above it with validation accuracy at chance (≤ {CHANCE_ACCURACY:.0%}); "
             "counted in the `collapsed` column, left out of every mean, CI and test.",
             f"- **Claims**: Welch's two-sided t-test between the two settings named, Holm-adjusted over all tested "
             f"claims of the study, α = {ALPHA}. Within a traced group seed i of two settings shares its "
             "initialization and data order, so Welch (unpaired) is conservative there.", ""]
    hw = sessions[-1]["hardware"] if sessions else hardware()
    total_wall = sum(s.get("wall_s", 0.0) for s in sessions)
    lines += [f"- **Hardware**: {hw['platform']}, {hw['cpu_count']} CPUs, JAX devices {', '.join(hw['devices'])}.",
              f"- **Wall time**: {_duration(total_wall)} over {len(sessions)} `--mode=study` session(s) "
              "(training, evaluation, compiles and reports); `ours: model-img/s` is every run's training images "
              "over the experiment's training wall time, compiles and evaluation included.", "",
              "| experiment | train images | test split | epochs | runs | training wall time | ours: model-img/s | "
              "PyTorch img/s (one run) | PyTorch, runs one after another (est.) |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    torch_total, unknown = 0.0, []
    for exp in exps:
        if exp.key not in plans:
            continue
        rows = protocol_rows(workdir, exp, plans[exp.key])
        rate = exp.torch_images_per_s
        if rate and rows["images"]:
            torch_s = rows["images"] / rate
            torch_total += torch_s
            estimate = _duration(torch_s)
        else:
            estimate = "n/a (no measured rate)" if rows["images"] else "–"
            if rows["images"]:
                unknown.append(exp.key)
        lines.append(f"| {exp.key} | {', '.join(map(str, sorted(rows['train']))) or '–'} | "
                     f"{'read at the val-selected epoch' if rows['test'] else 'none'} | "
                     f"{', '.join(map(str, sorted(rows['epochs']))) or '–'} | {rows['runs']} | "
                     f"{_duration(rows['wall_s'])} | {_rate(rows['images'], rows['wall_s'])} | "
                     f"{f'{rate:,.0f}' if rate else '–'} | {estimate} |")
    lines += ["", f"PyTorch estimate: {_duration(torch_total)} for the experiments with a measured rate"
              + (f" (not counted: {', '.join(unknown)})" if unknown else "") + ". It is the images these runs "
              "trained (runs × epochs × full batches) divided by PyTorch's training images/s for one run of the "
              "same model and batch size on a 2-core CPU (`scripts/torch_reference.py` via "
              "`scripts/benchmark.py`; each experiment's rate and where it was measured are in the study "
              "config); evaluation passes are not counted, so it is a lower bound.", ""]
    return lines


def run_summary(workdir: str) -> str:
    """'commit abc1234 on Linux-..., 2 CPUs (cpu:0), wall time 00:41:12 over 1 session(s)'."""
    sessions = (workdir_lib.load_json(workdir, STUDY_FILE) or {"sessions": []})["sessions"]
    if not sessions:
        return "nothing trained yet"
    commits = ", ".join(dict.fromkeys(s.get("commit", "unknown") for s in sessions))
    hw = sessions[-1]["hardware"]
    wall = sum(s.get("wall_s", 0.0) for s in sessions)
    return (f"commit {commits} on {hw['platform']}, {hw['cpu_count']} CPUs ({', '.join(hw['devices'])}), "
            f"wall time {_duration(wall)} over {len(sessions)} session(s)")


def write_study_report(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes workdir/report.md (and plots/) from the finished experiments; returns its path."""
    exps = experiments(config)
    loaded, plans, skipped, figures = {}, {}, {}, {}
    sections = []
    for exp in exps:
        head = [f"## {exp.name}", "", f"Directory `{exp.key}/`.", ""]
        if not exp.runnable:
            skipped[exp.key] = exp.skip_reason
            sections += head + [f"**Not run at `:{config.study.scale}`: {exp.skip_reason}.**", ""]
            if exp.reported:
                sections += ["The study reported: " + "; ".join(f"{r[0]}: {r[1]:g} ({r[2]})" for r in exp.reported), ""]
            continue
        settings, pending, plan = load_experiment(workdir, exp)
        loaded[exp.key] = settings
        if plan:
            plans[exp.key] = plan
        plots = experiment_plots(workdir, exp, settings, plan) if settings else []
        if plots:
            figures[exp.key] = " ".join(f"[{os.path.basename(p)}]({p})" for p in plots)
        sections += head
        if exp.figure:
            sections += [f"The study showed: {exp.figure}.", ""]
        sections += experiment_table(exp, settings) if settings else ["No finished runs yet."]
        if not exp.fold_reference and any("fold" in run for s in settings for run in s.runs):  # fresh folds do not climb
            sections += ["", "Validation accuracy (%) per fold:", ""] + report.fold_table(settings, "val_accuracy")
        if exp.analysis and plan:
            table = {"gates": gate_table, "output_correlation": correlation_table}[exp.analysis]
            sections += [""] + table(workdir, exp, plan)
        if exp.fold_reference and settings and loaded.get(exp.fold_reference):
            sections += [""] + leak_table(settings, loaded[exp.fold_reference], exp.fold_reference)
        if pending:
            sections += ["", "Not finished yet: " + ", ".join(f"`{p}`" for p in pending)]
        sections += [""] + [f"![{exp.key}]({p})" for p in plots] + [""]
    claims = judge_claims(config, loaded, skipped, figures)
    lines = [f"# Study {config.study.name}: {config.study.title}", "",
             f"Generated by `python -m cifar_jax.main --mode=study --config {config.study.config_path}:"
             f"{config.study.scale} --workdir {workdir}` (rebuild: `--mode=report`); {run_summary(workdir)}. "
             f"Source of the study's numbers and claims: {config.study.source}.", "",
             "Each of our cells is a mean over seeds with a Student-t 95% CI; **verdict** compares the study's "
             "single number with that CI" + (" (at a reduced scale: fewer epochs and images than the study, so "
             "our numbers are lower by design and the verdicts say how far, not whether the study was wrong)"
             if config.study.scale != "full" else "") + ".", "", "## Claims", "", verdict_counts(claims), "",
             "| claim | what the study said | test | p | p (Holm) | verdict | figure |",
             "|---|---|---|---:|---:|---|---|"]
    for c in claims:
        lines.append(f"| {display_id(c.key)} | {c.text} | {c.test} | {_p(c.p)} | {_p(c.p_holm)} | {c.verdict} | "
                     f"{c.figure or '–'} |")
    lines += [""] + sections + protocol_section(config, workdir, exps, plans)
    path = os.path.join(workdir, REPORT_FILE)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path

