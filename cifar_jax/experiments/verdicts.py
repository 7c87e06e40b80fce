"""What the runs show about each claim, worded by what the scale can show.

Failed runs: a NaN/diverged loss; a final train loss at ln 10 (uniform predictions) or above it at
chance accuracy; or a final validation accuracy within NEAR_CHANCE of chance (1 / classes). They
never enter a mean, CI or t-test; where a claim predicts a failure (expect='collapsed') they are
its outcome, counted.

Tests: a Welch t-test of a - b (or of the interaction (a - b) - (c - d); for 'best', of a against
every alternative, the largest p deciding), Holm-adjusted over the study's directional claims;
'equal' claims are two one-sided tests (TOST) against the margin their config states, outside
Holm's family (a correction would push them towards support). Every tested row states the
difference with its 95% CI and the smallest difference the seeds could detect with 80% power.
Cross-validation runs are averaged per seed first (folds share training data).

Levels: at the study's own scale (`:full`), or for a test that holds at any scale
(`claim(any_scale=True)`, collapse counts), a claim is supported / refuted / inconclusive; at a
reduced scale it is consistent / not reproduced at this scale / inconclusive.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import ml_collections
import numpy as np

from cifar_jax.experiments import dsl
from cifar_jax.experiments import report
from cifar_jax.experiments import stats
from cifar_jax.core import metrics
from cifar_jax.job.results import lower_is_better

LN10 = math.log(10.0)
COLLAPSE_TOLERANCE = 0.05  # a final train loss above ln 10 - this, at chance accuracy: a uniform prediction
NEAR_CHANCE = 0.02  # a final val accuracy within this of chance (1 / classes) is a failed run
LEVELS = ("supported", "refuted", "consistent", "not reproduced at this scale", "partly supported",
          "inconclusive", "not tested")
_TEST_FALLBACK = {"test_accuracy": "val_accuracy", "test_loss": "val_loss"}
GRAD_NORMS = "grad_norm/*"


def is_failed(run: dict[str, Any], num_classes: int = 10) -> bool:
    """A diverged run, one whose final train loss sits at or above ln 10 at chance accuracy, or one
    whose final val accuracy is within NEAR_CHANCE of chance. A merely slow run is not."""
    loss, accuracy, chance = run.get("train_loss"), run.get("val_accuracy"), 1.0 / num_classes
    if run.get("diverged") or (loss is not None and not math.isfinite(loss)):
        return True
    if accuracy is not None and accuracy <= chance + NEAR_CHANCE:
        return True
    return loss is not None and loss > LN10 - COLLAPSE_TOLERANCE and accuracy is None


def annotate(setting: report.Setting, num_classes: int = 10) -> None:
    """Marks failed runs (`collapsed`: report.Setting.kept leaves them out) and adds each run's test
    metrics at its epoch of best validation accuracy (`test_*_at_best`): results.json's
    `best_test_*` (the job scores test on each run's best weights), or the test curve at that
    epoch for jobs that scored test every epoch before results.json held it."""
    for i, run in enumerate(setting.runs):
        run["collapsed"] = is_failed(run, num_classes)
        epoch = run.get("best_epoch")
        for name in ("test_accuracy", "test_loss"):
            curve = setting.curves.get(name)
            if f"best_{name}" in run:
                run[f"{name}_at_best"] = run[f"best_{name}"]
            elif epoch is not None and curve is not None and curve.shape[0] >= epoch:
                run[f"{name}_at_best"] = float(curve[int(epoch) - 1, i])


def scale_of(metric: str) -> float:
    """Accuracies, F1 and dead-unit fractions in %, losses and gradient norms as they are."""
    return 1.0 if lower_is_better(metric) or metric.startswith(GRAD_NORMS[:-1]) else 100.0


def sample(setting: report.Setting, field: str) -> np.ndarray:
    """The kept runs' `field` in display units; with cross-validation folds, one mean per seed."""
    kept = [run for run, keep in zip(setting.runs, setting.kept) if keep]
    values = [math.nan if run.get(field) is None else float(run[field]) for run in kept]
    if any("fold" in run for run in kept):
        seeds = sorted({run["seed_index"] for run in kept})
        values = [stats.mean(v for v, run in zip(values, kept) if run["seed_index"] == s) for s in seeds]
    return np.asarray(values, np.float64) * scale_of(field)


def summary(setting: report.Setting, field: str) -> dict[str, Any]:
    """Mean, CI, n (seeds) and the prediction half-width over the kept runs, with the failure count."""
    values = sample(setting, field)
    return {**metrics.summarize(values), "pi": stats.prediction_half_width(values),
            "collapsed": sum(bool(r.get("collapsed")) for r in setting.runs), "runs": len(setting.runs)}


def resolve_metric(metric: str, settings: Sequence[report.Setting]) -> tuple[str, str]:
    """(the run field to read, its title): test metrics at the val-selected epoch when the data
    have a test split, else the final-epoch validation metric."""
    if metric.startswith("grad_norm/"):
        return metric, f"‖grad‖ {metric.split('/', 1)[1]}, final epoch (mean over steps)"
    if metric in _TEST_FALLBACK:
        if any(f"{metric}_at_best" in run for s in settings for run in s.runs):
            return f"{metric}_at_best", dsl.METRIC_TITLES[metric]
        fallback = _TEST_FALLBACK[metric]
        return fallback, f"{dsl.METRIC_TITLES[fallback]} (no test split)"
    return metric, dsl.METRIC_TITLES[metric]


def reported_collapse(value: float, metric: str) -> bool:
    """Whether the study's own number is a failed run (near-chance accuracy or a loss at ln 10)."""
    if lower_is_better(metric):
        return value >= LN10 - COLLAPSE_TOLERANCE
    return "accuracy" in metric and value <= (0.1 + NEAR_CHANCE) * 100


def row_verdict(value: float, metric: str, summ: dict[str, Any]) -> str:
    """The study's single run against ours: inside our 95% prediction interval (where one more of
    our runs would fall), outside it, or a failure."""
    ours_failed = summ["collapsed"] and summ["n"] == 0
    if reported_collapse(value, metric):
        tail = "ours failed too" if ours_failed else f"ours: {summ['collapsed']}/{summ['runs']} failed"
        return f"the study's run failed ({tail})"
    if summ["n"] == 0:
        return "ours: every run failed" if ours_failed else "no finished runs"
    if summ["n"] < 2:
        return "n = 1: no interval"
    if abs(value - summ["mean"]) <= summ["pi"]:
        return "within our 95% PI"
    return f"outside our 95% PI (study {'higher' if value > summ['mean'] else 'lower'})"


# ----------------------------------------------------------------------------- claims

@dataclasses.dataclass
class ClaimResult:
    key: str
    text: str
    expect: str
    any_scale: bool = False
    test: str = "–"
    level: str = ""  # one of LEVELS; empty for a comparison until the Holm adjustment is known
    detail: str = ""
    evidence: str = ""  # the one number or count the verdict rests on
    p: float = math.nan  # in Holm's family (directional claims)
    p_other: float = math.nan  # TOST or Fisher: outside the family
    p_holm: float = math.nan
    sign: int = 1  # +1: the claim says a is higher; -1: lower
    horizon: str = ""  # the training the runs had, where the scale is reduced
    full_scale: bool = False  # every run it rests on trained at the study's scale (:full or :cheap_full)
    diff: dict[str, float] = dataclasses.field(default_factory=lambda: stats.difference(None))
    figure: str = ""

    @property
    def verdict(self) -> str:
        return self.level + (f": {self.detail}" if self.detail else "")


@dataclasses.dataclass
class Context:
    """What the judge needs besides the claim: loaded settings, why experiments were not run,
    the study's scale, and each experiment's training horizon ('2 epochs × 8,000 images')."""

    loaded: dict[str, list[report.Setting]]
    skipped: dict[str, str]
    scale: str
    horizon: dict[str, str]
    scales: dict[str, str] = dataclasses.field(default_factory=dict)  # an experiment's, where not `scale`


def _find(ctx: Context, ref: str) -> report.Setting | None:
    exp_key, _, label = ref.partition(":")
    return next((s for s in ctx.loaded.get(exp_key, []) if s.label == label), None)


def refs(entry: ml_collections.ConfigDict) -> list[str]:
    """Every setting a claim names."""
    return [r for r in (entry.a, entry.b, entry.get("c", ""), entry.get("d", ""), *entry.get("others", ())) if r]


def _unit(field: str) -> str:
    return "" if lower_is_better(field) else " pts"


def judge_failures(result: ClaimResult, entry: ml_collections.ConfigDict, a: report.Setting,
                   b: report.Setting | None) -> None:
    """expect='collapsed': a's failed runs are the outcome; against b's by Fisher's exact test."""
    failed = sum(bool(r.get("collapsed")) for r in a.runs)
    result.test = f"failed runs of `{entry.a}`" + (f" against `{entry.b}` (Fisher, one-sided)" if b else "")
    result.evidence = f"{failed}/{len(a.runs)} runs failed"
    if b is not None:
        failed_b = sum(bool(r.get("collapsed")) for r in b.runs)
        result.p_other = stats.fisher_greater(failed, len(a.runs), failed_b, len(b.runs))
        result.evidence += f" vs {failed_b}/{len(b.runs)}, p = {report.format_p(result.p_other)}"
    level = "supported" if failed == len(a.runs) else "refuted" if failed == 0 else "partly supported"
    result.level = level if result.any_scale else {"supported": "consistent", "refuted": "not reproduced at "
                                                   "this scale"}.get(level, level)


def _parts(ctx: Context, entry: ml_collections.ConfigDict, field: str) -> tuple[Any, str]:
    """The Welch parts of the claim's difference (None below 2 kept runs a side) and a description."""
    pair = lambda x, y: stats.welch_parts(sample(_find(ctx, x), field), sample(_find(ctx, y), field))
    if not entry.get("c"):
        return pair(entry.a, entry.b), f"`{entry.a}` − `{entry.b}`"
    first, second = pair(entry.a, entry.b), pair(entry.c, entry.d)
    described = f"interaction: (`{entry.a}` − `{entry.b}`) − (`{entry.c}` − `{entry.d}`)"
    return (None if first is None or second is None else stats.combined_parts([first, second], [1, -1])), described


def judge_difference(result: ClaimResult, ctx: Context, entry: ml_collections.ConfigDict) -> None:
    """greater / less / equal: the difference, its CI and detectable effect; p for Holm or TOST."""
    field, title = resolve_metric(entry.metric, [s for s in map(lambda r: _find(ctx, r), refs(entry)) if s])
    parts, described = _parts(ctx, entry, field)
    result.diff = stats.difference(parts)
    kind = "TOST within ±" + f"{entry.margin:g}{_unit(field)}" if entry.expect == "equal" else "Welch"
    result.test = f"{kind}, {title}: {described}"
    smallest = min(stats.finite(sample(_find(ctx, ref), field)).size for ref in refs(entry))
    if smallest < 3:
        result.test += f" (n = {smallest} on a side: a weak test)"
    if parts is None:
        result.level, result.detail = "inconclusive", "fewer than 2 kept runs on a side"
    elif entry.expect == "equal":
        result.p_other = stats.tost_p(parts, entry.margin)
        _equal_level(result, entry.margin)
    else:
        result.p = result.diff["p"]


def judge_best(result: ClaimResult, ctx: Context, entry: ml_collections.ConfigDict) -> None:
    """'best': a against every alternative; the closest alternative's difference, the largest p."""
    field, title = resolve_metric(entry.metric, [s for s in map(lambda r: _find(ctx, r), refs(entry)) if s])
    a = sample(_find(ctx, entry.a), field)
    tests = [(ref, stats.difference(stats.welch_parts(a, sample(_find(ctx, ref), field)))) for ref in entry.others]
    tests = [(ref, t) for ref, t in tests if math.isfinite(t["p"])]  # an alternative whose runs all failed lost
    if not tests:
        result.level, result.detail = "inconclusive", "fewer than 2 kept runs on a side"
        return
    sign = result.sign
    closest_ref, closest = min(tests, key=lambda t: sign * t[1]["diff"] if math.isfinite(t[1]["diff"]) else -math.inf)
    result.diff = closest
    result.test = (f"Welch, {title}: `{entry.a}` against each of {len(tests)} alternatives (largest p); shown: "
                   f"the closest, `{closest_ref}`")
    wrong_way = [ref for ref, t in tests if t["p"] < dsl.ALPHA and sign * t["diff"] < 0]
    if wrong_way:
        result.p = min(t["p"] for ref, t in tests if ref in wrong_way)
        result.diff = dict(tests[[ref for ref, _ in tests].index(wrong_way[0])][1])
        result.test += f"; significantly better: `{'`, `'.join(wrong_way)}`"
    else:
        result.p = max(t["p"] for _, t in tests)


def _equal_level(result: ClaimResult, margin: float) -> None:
    d = result.diff
    if result.p_other < dsl.ALPHA:
        result.level = "supported" if result.any_scale else "consistent"
        result.detail = f"equivalent within ±{margin:g} (TOST p = {report.format_p(result.p_other)})"
    elif d["low"] > margin or d["high"] < -margin:
        result.level = "refuted" if result.any_scale else "not reproduced at this scale"
        result.detail = f"the difference's CI lies outside ±{margin:g}"
    else:
        result.level = "inconclusive"
        result.detail = (f"neither equivalent within ±{margin:g} nor outside it "
                         f"(TOST p = {report.format_p(result.p_other)})")


def directional_level(result: ClaimResult, alpha: float = dsl.ALPHA) -> None:
    """After Holm: the sign of a significant difference against the claimed direction."""
    if result.p_holm >= alpha:
        result.level = "inconclusive"
        result.detail = f"could detect ≥ {abs(result.diff['mde']):.2f} with 80% power"
        return
    if (result.diff["diff"] > 0) == (result.sign > 0):
        result.level = "supported" if result.any_scale else "consistent"
    else:
        result.level = "refuted" if result.any_scale else "not reproduced at this scale"
        result.detail = "significant, the opposite way" + (f" at {result.horizon}" if result.horizon else "")


def judge_claim(key: str, entry: ml_collections.ConfigDict, ctx: Context) -> ClaimResult:
    """One claim's test; a directional claim's level waits for the study's Holm adjustment."""
    exp_keys = list(dict.fromkeys(r.partition(":")[0] for r in refs(entry)))
    horizon = "; ".join(dict.fromkeys(ctx.horizon[k] for k in exp_keys if ctx.horizon.get(k)))
    lower = entry.expect == "less" or (entry.expect == "best" and lower_is_better(entry.metric))
    full = all(ctx.scales.get(k, ctx.scale) in dsl.FULL_SCALES for k in exp_keys)
    result = ClaimResult(key=key, text=entry.text, expect=entry.expect, sign=-1 if lower else 1,
                         any_scale=entry.get("any_scale", False) or full, horizon="" if full else horizon,
                         full_scale=full)
    blocked = [f"{k} {ctx.skipped[k]}" for k in exp_keys if k in ctx.skipped]
    scales = {k: ctx.scales.get(k, ctx.scale) for k in exp_keys if k not in ctx.skipped}
    if entry.expect == "untested":
        result.level, result.detail = "not tested", entry.note
    elif blocked:
        result.level, result.detail = "not tested", f"here: {'; '.join(blocked)}"
    elif len(set(scales.values())) > 1:  # a difference across two trainings would measure the trainings
        result.level = "not tested"
        result.detail = ("here: its experiments ran at different scales ("
                         + ", ".join(f"{k} at :{s}" for k, s in scales.items()) + ")")
    elif any(_find(ctx, r) is None for r in refs(entry)):
        result.level, result.detail = "not tested", "its runs have not finished"
    elif entry.expect == "collapsed":
        judge_failures(result, entry, _find(ctx, entry.a), _find(ctx, entry.b) if entry.b else None)
    elif entry.expect == "best":
        judge_best(result, ctx, entry)
    else:
        judge_difference(result, ctx, entry)
    if entry.note and entry.expect != "untested" and result.test != "–":
        result.test += f" ({entry.note})"
    if result.level == "not reproduced at this scale" and result.horizon:
        result.detail = f"{result.detail + ', ' if result.detail else ''}at {result.horizon}"
    return result


def judge_claims(config: ml_collections.ConfigDict, ctx: Context) -> list[ClaimResult]:
    """Every claim's verdict; the directional p-values are Holm-adjusted together."""
    results = [judge_claim(key, entry, ctx) for key, entry in config.get("claims", {}).items()]
    family = [r for r in results if math.isfinite(r.p) and not r.level]
    for r, adjusted in zip(family, stats.holm([r.p for r in family])):
        r.p_holm = adjusted
        directional_level(r)
    for r in results:
        if not r.evidence and math.isfinite(r.diff["diff"]):
            d = r.diff
            r.evidence = f"difference {d['diff']:+.2f} [{d['low']:.2f}, {d['high']:.2f}]"
    return results


def verdict_counts(claims: Sequence[ClaimResult], scale: str) -> str:
    """'Claims at :cpu: 2 supported, 5 consistent, 3 inconclusive, 2 not tested.'"""
    counts = {level: sum(c.level == level for c in claims) for level in LEVELS}
    return f"Claims at `:{scale}`: " + ", ".join(f"{n} {level}" for level, n in counts.items() if n) + "."


