"""A study's report, built from evidence alone (`cifar_jax.experiments.evidence`).

`write_study_report(config, workdir)` gathers each experiment's evidence -- extracted from
WORKDIR/<experiment>/ where it trained, else WORKDIR/evidence/, else the committed evidence that
matches the experiment's config (a :cpu report's :cheap_full runs first: `CARRIED_SCALE`, then
`config.study.evidence_dir`) -- writes the extracted files to
WORKDIR/evidence/, and renders WORKDIR/report.md and WORKDIR/plots/ from those files only, so a
fresh clone rebuilds the same text from the committed evidence (`--mode=report`, any workdir).
`publish(config, workdir, root)` copies report, plots and evidence to ROOT/<name>.md, ROOT/<name>/.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from cifar_jax.experiments import dsl
from cifar_jax.experiments import evidence as evidence_lib
from cifar_jax.experiments import plots
from cifar_jax.experiments import report
from cifar_jax.experiments import stats
from cifar_jax.experiments import study_tables
from cifar_jax.experiments import verdicts
from cifar_jax.errors import UsageError
from cifar_jax.experiments.verdicts import GRAD_NORMS
from cifar_jax.job import storage
from cifar_jax.job import workdir as workdir_lib

REPORT_FILE = "report.md"
PLOTS = "plots"
SIZE = {scale: i for i, scale in enumerate(reversed(dsl.SCALES))}  # smoke < cpu < cheap_full < full
AtScale = Callable[[str], Any]  # scale -> the study at that scale (`study.ScaleView`: evidence_dir, experiments)
# A report at the key's scale shows the value's runs of its CPU-cheap experiments in place of its
# own, read from the evidence directory of that scale's config, with its own runs' verdicts beside
# them (`write_study_report`): the :cheap_full runs of 001, 002 and 004 in their :cpu reports.
CARRIED_SCALE = {"cpu": "cheap_full"}


# ----------------------------------------------------------------------------- evidence

def group_analysis(workdir: str, exp: Any, group: dict[str, Any]) -> dict[str, Any] | None:
    """A finished group's `exp.analysis` (a function of `cifar_jax.experiments.analysis` on its best
    checkpoint), computed once and cached in workdir/analysis/<experiment>/<group>.json; None
    while the group has not finished."""
    from cifar_jax.experiments import analysis

    group_dir = os.path.join(workdir, exp.key, group["name"])
    if not storage.exists(os.path.join(group_dir, "results.json")):
        return None
    cache = os.path.join(workdir, "analysis", exp.key, f"{report.path_name(group['name'])}.json")
    cached = workdir_lib.load_json(*os.path.split(cache))
    if cached is None:
        run = {"gates": analysis.gate_weights, "output_correlation": analysis.output_correlation}[exp.analysis]
        cached = run(group_dir)
        storage.makedirs(os.path.dirname(cache))
        workdir_lib.write_json_atomic(cache, cached)
    return cached


def committed(config: ml_collections.ConfigDict, exp: Any, at_scale: AtScale | None,
              larger_only: bool = False) -> dict[str, Any] | None:
    """The committed evidence of `exp` when it matches the experiment's config at the scale it was
    trained: first the `CARRIED_SCALE` runs in that scale's evidence directory, so a :cpu report
    carries the :cheap_full runs of its CPU-cheap experiments; else this config's directory, whose
    file may be of another scale where scales share one directory (`at_scale` gives that scale's
    config), each marked. `larger_only`: no smaller scale than this config's (what lets a study
    skip training)."""
    carried = carried_evidence(config, exp, at_scale)
    if carried is not None:
        return carried
    found = evidence_lib.read(config.study.evidence_dir, exp.key) if config.study.evidence_dir else None
    scale = (found or {}).get("scale", config.study.scale)
    if scale == config.study.scale:
        return _matching(found, (exp,), exp.key)
    if scale not in SIZE or not at_scale or (larger_only and SIZE[scale] < SIZE[config.study.scale]):
        return None
    return _matching(found, at_scale(scale).experiments, exp.key)


def _matching(found: dict[str, Any] | None, experiments: Sequence[Any], key: str) -> dict[str, Any] | None:
    """`found` where it is complete and was trained with the config of experiment `key` among
    `experiments` (its scale's); else None."""
    twin = next((e for e in experiments if e.key == key), None)
    return found if twin and evidence_lib.matches(found, workdir_lib.config_to_dict(twin.config)) else None


def _carried_dir(config: ml_collections.ConfigDict, at_scale: AtScale | None) -> str:
    """The evidence directory of this scale's `CARRIED_SCALE`, where it has its own; else ''."""
    carried = CARRIED_SCALE.get(config.study.scale)
    directory = at_scale(carried).evidence_dir if carried and at_scale and config.study.evidence_dir else ""
    return "" if directory == config.study.evidence_dir else directory


def carried_evidence(config: ml_collections.ConfigDict, exp: Any, at_scale: AtScale | None) -> dict[str, Any] | None:
    """`exp`'s runs at this scale's `CARRIED_SCALE`, committed in its own evidence directory and
    matching its config there; None without any, or where the two scales share one directory."""
    directory = _carried_dir(config, at_scale)
    if not directory:
        return None
    carried = CARRIED_SCALE[config.study.scale]
    found = evidence_lib.read(directory, exp.key)
    if not found or found.get("scale") != carried:
        return None
    return _matching(found, at_scale(carried).experiments, exp.key)


def gather(config: ml_collections.ConfigDict, workdir: str, exp: Any, at_scale: AtScale | None = None
           ) -> dict[str, Any] | None:
    """One experiment's evidence: extracted from the workdir (and written to WORKDIR/evidence/), else
    a file there, else the committed one (`committed`); None without any."""
    analyse = (lambda exp_dir, group: group_analysis(workdir, exp, group)) if exp.analysis else None
    extracted = evidence_lib.extract(workdir, exp, config.study.scale, analyse) if exp.runnable else None
    own_dir = os.path.join(workdir, evidence_lib.DIR)
    if extracted is not None:
        evidence_lib.write(own_dir, extracted)
        return extracted
    found = evidence_lib.read(own_dir, exp.key) if exp.runnable else None
    return found or committed(config, exp, at_scale)


def loaded_settings(ev: dict[str, Any]) -> list[report.Setting]:
    """The settings of an experiment's evidence, failed runs marked."""
    classes = {g["name"]: g.get("num_classes", 10) for g in ev["groups"]}
    settings = evidence_lib.settings(ev)
    for setting in settings:
        verdicts.annotate(setting, classes.get(setting.group, 10))
    return settings


# ----------------------------------------------------------------------------- plots

def axis_fields(plan: dict[str, Any]) -> list[str]:
    """The swept fields worth a metric-vs-value chart: every axis of a grid; of a zip, the first
    axis when its values tell the settings apart (batch sizes, widths; not a BN on/off ablation)."""
    axes = plan.get("axes", [])
    if plan.get("kind") == "grid":
        return [field for field, _ in axes]
    if plan.get("kind") == "zip" and axes and len({repr(v) for v in axes[0][1]}) == len(axes[0][1]) > 1:
        return [axes[0][0]]
    return []


def experiment_plots(workdir: str, exp: Any, settings: Sequence[report.Setting], ev: dict[str, Any],
                     reference: Sequence[report.Setting] = ()) -> list[str]:
    """Learning curves, step curves and metric-vs-value charts, paths relative to workdir; a chain
    of cross-validation folds gets the fold chart against `reference` (its fresh folds) instead."""
    plan = ev["plan"]
    storage.makedirs(os.path.join(workdir, "plots"))
    written = []
    for curve in (None, *exp.curves):
        name = f"plots/{exp.key}_{curve + '_' if curve else ''}curves.png"
        if plots.plot_learning_curves(os.path.join(workdir, name), settings, exp.name, metric=curve):
            written.append(name)
    for curve in exp.step_curves:
        name = f"plots/{exp.key}_{'grad_norm' if curve == GRAD_NORMS else curve}_steps.png"
        if plot_steps(os.path.join(workdir, name), ev, settings, curve, exp.name):
            written.append(name)
    if exp.fold_reference:
        name = f"plots/{exp.key}_folds.png"
        return written + ([name] if fold_plot(os.path.join(workdir, name), exp, settings, reference) else [])
    metric = plan.get("metric", "val_accuracy")
    if any(s.sample(metric).size for s in settings):
        for field in axis_fields(plan):
            name = f"plots/{exp.key}_{report.path_name(field)}.png"
            rows = report.stage_rows(settings, metric, plan.get("alpha", stats.ALPHA))
            plots.plot_axis(os.path.join(workdir, name), settings, rows, field, metric, plan.get("alpha", stats.ALPHA))
            written.append(name)
    return written


def fold_plot(path: str, exp: Any, leaky: Sequence[report.Setting], correct: Sequence[report.Setting]) -> bool:
    """Leaky (chained) against correct (fresh) folds, per fold, with the study's own fold numbers."""
    folds, complete, values = study_tables.paired_folds(leaky, correct)
    if not folds or not complete:
        return False
    fold_of = {s.label: int(s.runs[0]["fold"]) for s in leaky if s.runs and "fold" in s.runs[0]}
    series = [(f"correct: every fold freshly initialised ({exp.fold_reference})", values["correct"]),
              ("leaky: fold k starts from fold k−1's trained weights", values["leaky"])]
    return plots.plot_folds(path, folds, [(label, 100.0 * np.array([[by_key[(f, s)] for s in complete] for f in folds]))
                                          for label, by_key in series],
                            [(fold_of[label], value) for label, value, _, metric in exp.reported
                             if label in fold_of and metric == "val_accuracy"], exp.name)


def step_series(ev: dict[str, Any], setting: report.Setting, metric: str, collapsed: bool = False
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(training steps, values (records, runs)) of one setting's steps.jsonl metric over its kept
    runs, or over its failed ones; None without them."""
    group = next((g for g in ev["groups"] if g["name"] == setting.group), {})
    records = [r for r in group.get("steps", []) if metric in r]
    columns = [run["run"] for run, kept in zip(setting.runs, setting.kept) if kept != collapsed]
    if not records or not columns:
        return None
    return (np.array([r["step"] for r in records]),
            np.array([[r[metric][c] for c in columns] for r in records], np.float64) * verdicts.scale_of(metric))


def plot_steps(path: str, ev: dict[str, Any], settings: Sequence[report.Setting], curve: str, title: str) -> bool:
    """The dead-ReLU fraction (one panel), or every layer's gradient norm (a log panel per layer),
    against the training step, one line per setting. Collapsed runs, left out of every mean, are
    dashed lines of their own: where units die they are the diagnosis."""
    def series(name: str) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
        out = []
        for s in settings:
            for collapsed in (False, True):
                found = step_series(ev, s, name, collapsed)
                if found:
                    label = f"{s.label}, failed ({found[1].shape[1]})" if collapsed else s.label
                    out.append((label, *found, collapsed))
        return out

    panels = {name: series(name) for name in study_tables.expand_columns((curve,), settings)}
    ylabel = "dead ReLU units (%)" if curve == "dead_relu_fraction" else "‖grad‖ (per layer)"
    return plots.plot_step_panels(path, panels, ylabel, title, log=curve == GRAD_NORMS)




# ----------------------------------------------------------------------------- sections

def scale_mark(config: ml_collections.ConfigDict, exp: Any, ev: dict[str, Any] | None) -> list[str]:
    """The line that says an experiment's runs are of another scale than the report's."""
    scale = (ev or {}).get("scale", config.study.scale)
    if scale == config.study.scale:
        return []
    what = "the study's own epochs and data" if scale in dsl.FULL_SCALES else "fewer epochs and images than the study"
    why = f"; here: {exp.skip_reason}" if not exp.runnable else ""
    return [f"**Trained at `:{scale}`** ({what}), not at this report's `:{config.study.scale}`{why}.", ""]


def experiment_section(workdir: str, exp: Any, ev: dict[str, Any] | None, settings: Sequence[report.Setting],
                       loaded: dict[str, list[report.Setting]], mark: Sequence[str] = ()
                       ) -> tuple[list[str], list[str]]:
    """(markdown lines, plot paths) of one experiment that was run (`mark`: `scale_mark`)."""
    head = [f"## {exp.name}", "", f"Directory `{exp.key}/`.", "", *mark]
    written = experiment_plots(workdir, exp, settings, ev, loaded.get(exp.fold_reference, [])) if settings else []
    lines = head + ([f"The study showed: {exp.figure}.", ""] if exp.figure else [])
    lines += study_tables.experiment_table(exp, settings) if settings else ["No finished runs yet."]
    if not exp.fold_reference and any("fold" in run for s in settings for run in s.runs):
        lines += ["", "Validation accuracy (%) per fold:", ""] + report.fold_table(settings, "val_accuracy")
    if exp.analysis and ev:
        table = {"gates": study_tables.gate_table, "output_correlation": study_tables.correlation_table}[exp.analysis]
        lines += [""] + table(ev)
    if exp.fold_reference and settings and loaded.get(exp.fold_reference):
        lines += [""] + study_tables.leak_table(settings, loaded[exp.fold_reference], exp.fold_reference)
    waiting = evidence_lib.pending(ev) if ev else []
    if waiting:
        lines += ["", "Not finished yet: " + ", ".join(f"`{p}`" for p in waiting)]
    return lines + [""] + [f"![{exp.key}]({p})" for p in written] + [""], written


def skipped_section(config: ml_collections.ConfigDict, exp: Any) -> list[str]:
    lines = [f"## {exp.name}", "", f"Directory `{exp.key}/`.", "",
             f"**Not run at `:{config.study.scale}`: {exp.skip_reason}.**", ""]
    if exp.reported:
        lines += ["The study reported: " + "; ".join(f"{r[0]}: {r[1]:g} ({r[2]})" for r in exp.reported), ""]
    return lines


def _diff_cell(claim: verdicts.ClaimResult) -> str:
    d = claim.diff
    if not np.isfinite(d["diff"]):
        return "–"
    return f"{d['diff']:+.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def claims_table(claims: Sequence[verdicts.ClaimResult]) -> list[str]:
    """One row per claim: its test, difference with CI, detectable effect, p-values and verdict."""
    lines = ["| claim | what the study said | test | ours: difference [95% CI] | detectable (80% power) | p | "
             "p (Holm) | verdict | figure |", "|---|---|---|---:|---:|---:|---:|---|---|"]
    for c in claims:
        p = c.p if np.isfinite(c.p) else c.p_other
        mde = f"{abs(c.diff['mde']):.2f}" if np.isfinite(c.diff["mde"]) else "–"
        lines.append(f"| {dsl.display_id(c.key)} | {c.text} | {c.test} | {_diff_cell(c)} | {mde} | "
                     f"{report.format_p(p)} | {report.format_p(c.p_holm)} | {c.verdict} | {c.figure or '–'} |")
    return lines


def _scale_basis(claim: verdicts.ClaimResult) -> str:
    """Why a reduced-scale report may say *supported* or *refuted* of this claim."""
    if claim.full_scale:
        return "; judged on runs at the study's scale"
    return "; the test holds at any scale" if claim.any_scale else ""


def what_holds(claims: Sequence[verdicts.ClaimResult], scale: str) -> list[str]:
    """One plain sentence per claim: its evidence level and the number it rests on; at a reduced
    scale, which verdicts stand regardless of it."""
    lines = ["## What holds", ""]
    reduced = scale not in dsl.FULL_SCALES
    for c in claims:
        basis = c.evidence or c.detail
        lines.append(f"- **{dsl.display_id(c.key)}** {c.text}: **{c.level}**" + (f" ({basis})" if basis else "")
                     + (_scale_basis(c) if reduced and c.level in ("supported", "refuted") else "") + ".")
    return lines + [""]


def scales_line(config: ml_collections.ConfigDict, evidence: dict[str, dict[str, Any]]) -> list[str]:
    """Which experiments' runs are of which scale, where they are not all of the report's."""
    by_scale = {}
    for key, ev in evidence.items():
        by_scale.setdefault(ev.get("scale", config.study.scale), []).append(f"`{key}`")
    if set(by_scale) <= {config.study.scale}:
        return []
    return ["Scales: " + "; ".join(f"at `:{scale}` {', '.join(keys)}" for scale, keys in
                                   sorted(by_scale.items(), key=lambda item: -SIZE.get(item[0], 0)))
            + ". Each experiment's section and claims are read at its own scale.", ""]


def commits_line(scale: str, evidence: dict[str, dict[str, Any]]) -> str:
    """The commits that trained the report's own scale, then those of evidence standing in from
    another scale, each named: the command above trains only the first."""
    by_scale = {}
    for ev in evidence.values():
        by_scale.setdefault(ev.get("scale", scale), {}).update(dict.fromkeys(ev.get("commits", [])))
    own = ", ".join(by_scale.pop(scale, {})) or "–"
    return own + "".join(f" (evidence at `:{other}`: {', '.join(commits)})" for other, commits in
                         sorted(by_scale.items(), key=lambda item: -SIZE.get(item[0], 0)))


def header(config: ml_collections.ConfigDict, evidence: dict[str, dict[str, Any]],
           claims: Sequence[verdicts.ClaimResult], carried_dir: str = "") -> list[str]:
    """Title, provenance, what holds, deviations and the claims table. `carried_dir`: where the
    `CARRIED_SCALE` runs shown in place of this scale's are committed, if any are."""
    study = config.study
    carried = (f" and, for the `:{CARRIED_SCALE[study.scale]}` runs, in `{carried_dir}/`" if carried_dir else "")
    scale_note = ("" if study.scale in dsl.FULL_SCALES else
                  f" At `:{study.scale}` the runs train on fewer images for fewer epochs than the study: a claim "
                  "about the study's full training is *consistent*, *not reproduced at this scale* or "
                  "*inconclusive* here; *supported* and *refuted* are kept for tests that hold at any scale "
                  "(failures, a no-op layer, a leak).")
    lines = [f"# Study {study.name}: {study.title}", "",
             f"Trained with `python -m cifar_jax.main --mode=study --config {study.config_path}:{study.scale} "
             f"--workdir WORKDIR` at commit {commits_line(study.scale, evidence)}; every number and plot below "
             f"is rebuilt from the per-run evidence in `{study.evidence_dir}/`{carried} by `--mode=report` (any "
             "workdir). "
             f"Source of the study's numbers and claims: {study.source}.", "",
             "Each of our cells is a mean over seeds with a Student-t 95% CI; the study's single runs are compared "
             "with our 95% prediction interval." + scale_note, ""]
    lines += scales_line(config, evidence) + what_holds(claims, study.scale)
    if study.get("deviations"):
        lines += ["## Where our runs differ from the study's", ""] + [f"- {d}" for d in study.deviations] + [""]
    return lines + ["## Claims", "", verdicts.verdict_counts(claims, study.scale), ""] + claims_table(claims) + [""]


# ----------------------------------------------------------------------------- the report

def judged_on_committed(config: ml_collections.ConfigDict, exps: Sequence[Any]) -> list[verdicts.ClaimResult] | None:
    """The claims of `config` judged on its committed evidence of its own scale alone; None without any."""
    loaded, horizons = {}, {}
    for exp in exps:
        ev = committed(config, exp, None)
        if ev is not None:
            loaded[exp.key], horizons[exp.key] = loaded_settings(ev), study_tables.horizon(ev)
    if not loaded:
        return None
    return verdicts.judge_claims(config, verdicts.Context(loaded=loaded, skipped={}, scale=config.study.scale,
                                                          horizon=horizons))


def _decisive(claim: verdicts.ClaimResult) -> bool:
    """Whether the claim's difference has a 95% CI that excludes 0."""
    d = claim.diff
    return bool(np.isfinite(d["diff"]) and (d["low"] > 0 or d["high"] < 0))


def scale_reading(own: verdicts.ClaimResult, other: verdicts.ClaimResult) -> str:
    """How a reduced-scale result (`other`) reads beside this scale's (`own`)."""
    if "not tested" in (own.level, other.level):
        return "not comparable: one side is not tested"
    if not (np.isfinite(own.diff["diff"]) and np.isfinite(other.diff["diff"])):
        return "the same" if own.level == other.level else "they differ"
    if _decisive(other) and not _decisive(own):
        return "**short-horizon**: its effect is not seen here"
    if _decisive(other) and _decisive(own) and np.sign(other.diff["diff"]) != np.sign(own.diff["diff"]):
        return "**short-horizon**: reversed here"
    if _decisive(own) and not _decisive(other):
        return "seen only here"
    return "the same direction" if _decisive(own) else "neither shows an effect"


def scale_comparison(scale: str, claims: Sequence[verdicts.ClaimResult], other_scale: str,
                     others: Sequence[verdicts.ClaimResult]) -> list[str]:
    """Each claim's verdict here beside its verdict at `other_scale`, and the reduced scale's
    short-horizon artefacts named in one sentence."""
    by_key = {c.key: c for c in others}
    rows, artefacts = [], []
    for c in claims:
        other = by_key.get(c.key)
        if other is None:
            continue
        reading = scale_reading(c, other)
        artefacts += [dsl.display_id(c.key)] if reading.startswith("**short-horizon**") else []
        horizon = f" ({other.horizon})" if other.horizon else ""
        rows.append(f"| {dsl.display_id(c.key)} | {c.level} ({_diff_cell(c)}) | {other.level} ({_diff_cell(other)})"
                    f"{horizon} | {reading} |")
    return [f"## At `:{scale}` against `:{other_scale}`", "",
            f"The same claims judged on the committed `:{other_scale}` evidence (a shorter training on fewer images). "
            + (f"Short-horizon artefacts, a `:{other_scale}` effect that `:{scale}` does not show or reverses: "
               f"{', '.join(artefacts)}." if artefacts else f"No `:{other_scale}` effect is contradicted here."), "",
            f"| claim | at `:{scale}`: verdict (difference [95% CI]) | at `:{other_scale}` | reading |",
            "|---|---|---|---|", *rows, ""]


def write_study_report(config: ml_collections.ConfigDict, workdir: str, exps: Sequence[Any],
                       at_scale: AtScale | None = None,
                       compare: Sequence[tuple[ml_collections.ConfigDict, Sequence[Any]]] = ()) -> str:
    """Writes WORKDIR/report.md, plots/ and evidence/ from the experiments' evidence; returns the path.
    An experiment whose evidence is of another scale (`committed`) is shown and judged at that scale.
    `compare`: (config, experiments) of other scales, judged on their committed evidence and shown
    beside this report's verdicts (`scale_comparison`) where they have any."""
    storage.makedirs(workdir)
    evidence, loaded, skipped, figures, horizons, sections = {}, {}, {}, {}, {}, []
    for exp in exps:
        ev = gather(config, workdir, exp, at_scale)
        if not exp.runnable and ev is None:
            skipped[exp.key] = exp.skip_reason
            sections += skipped_section(config, exp)
            continue
        if ev is not None:
            evidence[exp.key] = ev
            horizons[exp.key] = study_tables.horizon(ev)
        loaded[exp.key] = loaded_settings(ev) if ev else []
        lines, written = experiment_section(workdir, exp, ev, loaded[exp.key], loaded, scale_mark(config, exp, ev))
        sections += lines
        if written:
            figures[exp.key] = f"[{os.path.basename(written[0])}]({written[0]})"
    ctx = verdicts.Context(loaded=loaded, skipped=skipped, scale=config.study.scale, horizon=horizons,
                           scales={key: ev.get("scale", config.study.scale) for key, ev in evidence.items()})
    claims = verdicts.judge_claims(config, ctx)
    for c, entry in zip(claims, config.get("claims", {}).values()):
        keys = dict.fromkeys(r.partition(":")[0] for r in verdicts.refs(entry))
        c.figure = ", ".join(figures[k] for k in keys if k in figures)
    comparisons = []
    for other_config, other_exps in compare:
        others = judged_on_committed(other_config, other_exps)
        if others is not None:
            comparisons += scale_comparison(config.study.scale, claims, other_config.study.scale, others)
    carried_scale = CARRIED_SCALE.get(config.study.scale)
    carried = {key for key, ev in evidence.items() if carried_scale and ev.get("scale") == carried_scale}
    carried_dir = _carried_dir(config, at_scale) if carried else ""
    own = judged_on_committed(config, exps) if carried_dir else None
    involved = [c for c, entry in zip(claims, config.get("claims", {}).values())
                if carried & {r.partition(":")[0] for r in verdicts.refs(entry)}]
    if own is not None and involved:  # the carried runs' verdicts beside this scale's own runs'
        comparisons += scale_comparison(carried_scale, involved, config.study.scale, own)
    lines = (header(config, evidence, claims, carried_dir) + comparisons + sections
             + study_tables.protocol_section(config, exps, evidence))
    path = os.path.join(workdir, REPORT_FILE)
    workdir_lib.write_text_atomic(path, "\n".join(lines))
    return path


def carried_evidence_dir(config: ml_collections.ConfigDict, root: str) -> str:
    """`config.study.evidence_dir` (docs/studies/NAME/full/evidence) under ROOT instead: the part
    after the study's own folder kept, so a carried scale publishes where ROOT's reports read it."""
    parts = os.path.normpath(config.study.evidence_dir).split(os.sep)
    if config.study.name not in parts:
        return config.study.evidence_dir
    after = len(parts) - parts[::-1].index(config.study.name)
    return os.path.join(root, config.study.name, *parts[after:])


def publish_evidence(config: ml_collections.ConfigDict, workdir: str, target: str) -> str:
    """Copies WORKDIR's complete evidence into `target`, refusing before any copy to replace a file
    of a larger scale; returns that directory."""
    source_dir = os.path.join(workdir, evidence_lib.DIR)
    complete = {key: ev for key in _evidence_keys(source_dir)
                if (ev := evidence_lib.read(source_dir, key) or {}).get("complete")}
    refuse_replacing_larger(complete, target, "remove that file first")
    storage.makedirs(target)
    for key in complete:
        storage.path(evidence_lib.path(source_dir, key)).copy(evidence_lib.path(target, key), overwrite=True)
    return target


def published_text(text: str, name: str) -> str:
    """The report as it reads from ROOT/<name>.md: plots linked in ROOT/<name>/."""
    return text.replace(f"]({PLOTS}/", f"]({name}/")


def report_scale(text: str) -> str | None:
    """The scale a report was trained at, from its header's command line (`--config PATH:SCALE`)."""
    command = text.partition("--config ")[2].split(" ", 1)[0]
    return command.rsplit(":", 1)[1] if ":" in command else None


def check_no_smaller_scale_over_larger(config: ml_collections.ConfigDict, workdir: str, root: str) -> None:
    """Refuses, before anything is copied, to replace a published report or evidence with one of a
    smaller scale (a `:cpu` run published over `:full` evidence would lose hours of runs)."""
    scale, report_path = config.study.scale, os.path.join(root, f"{config.study.name}.md")
    published = report_scale(open(report_path).read()) if os.path.isfile(report_path) else None
    # The root this config publishes into: its evidence_dir is ROOT/NAME/evidence.
    own_root = os.path.dirname(os.path.dirname(os.path.normpath(config.study.evidence_dir or ".")))
    other_root = own_root if own_root and os.path.normpath(own_root) != os.path.normpath(root) else "OTHER_ROOT"
    fix = (f"publish into another root (python scripts/publish_study.py {config.study.config_path}:{scale} {workdir} "
           f"{other_root})")
    if published in SIZE and scale in SIZE and SIZE[scale] < SIZE[published]:
        raise UsageError(f"{report_path} is a `:{published}` report and this one is `:{scale}`: publishing would "
                         f"replace it; {fix}")
    source_dir = os.path.join(workdir, evidence_lib.DIR)
    refuse_replacing_larger({key: evidence_lib.read(source_dir, key) for key in _evidence_keys(source_dir)},
                            os.path.join(root, config.study.name, evidence_lib.DIR), f"{fix} or remove that file first")


def _evidence_keys(directory: str) -> list[str]:
    """The experiments with an evidence file in `directory`, sorted; none where it does not exist."""
    files = sorted(storage.listdir(directory)) if storage.exists(directory) else []
    return [file[:-len(".json")] for file in files]


def refuse_replacing_larger(new: dict[str, dict[str, Any] | None], published_dir: str, fix: str) -> None:
    """A one-line UsageError, before anything is copied, where an evidence file of `new` (key ->
    evidence) would replace one of a larger scale in `published_dir`."""
    for key, evidence in new.items():
        new_scale, old_scale = (evidence or {}).get("scale"), (evidence_lib.read(published_dir, key) or {}).get("scale")
        if old_scale in SIZE and SIZE.get(new_scale, -1) < SIZE[old_scale]:  # an unknown scale never replaces
            raise UsageError(f"{evidence_lib.path(published_dir, key)} holds `:{old_scale}` runs and this workdir's "
                             f"are `:{new_scale}`: publishing would replace them; {fix}")


def publish(config: ml_collections.ConfigDict, workdir: str, root: str = "docs/studies") -> str:
    """Copies WORKDIR's report, plots and evidence to ROOT/<name>.md and ROOT/<name>/ (the layout
    `config.study.evidence_dir` expects by default); returns the report's path. Never replaces
    evidence of a larger scale (`check_no_smaller_scale_over_larger`); removes the plots of the
    report it replaces that the new one does not draw, so none is left that no report links.
    A scale another one carries (`CARRIED_SCALE`: :cheap_full) with its own evidence directory
    publishes its evidence there and no report: the carrying scale's report shows it once rebuilt."""
    name = config.study.name
    target = os.path.join(root, name)
    carried_dir = carried_evidence_dir(config, root)
    if config.study.scale in CARRIED_SCALE.values() and os.path.normpath(carried_dir) != \
            os.path.normpath(os.path.join(target, evidence_lib.DIR)):
        return publish_evidence(config, workdir, carried_dir)
    check_no_smaller_scale_over_larger(config, workdir, root)
    os.makedirs(os.path.join(target, evidence_lib.DIR), exist_ok=True)
    drawn = set(storage.listdir(os.path.join(workdir, PLOTS)))
    for stale in sorted(set(storage.listdir(target)) - drawn):
        if stale.endswith(".png"):
            storage.path(os.path.join(target, stale)).unlink()
    text = storage.path(os.path.join(workdir, REPORT_FILE)).read_text()
    workdir_lib.write_text_atomic(os.path.join(root, f"{name}.md"), published_text(text, name))
    for folder, destination in ((PLOTS, target), (evidence_lib.DIR, os.path.join(target, evidence_lib.DIR))):
        for file in storage.listdir(os.path.join(workdir, folder)):
            storage.path(os.path.join(workdir, folder, file)).copy(os.path.join(destination, file), overwrite=True)
    return os.path.join(root, f"{name}.md")
