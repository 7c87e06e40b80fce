"""The study-config language: `study_config`, `experiment`, `claim`, `by_scale`.

A leaf module (ml_collections and the standard library only): a study config under `configs/`
loads in a fraction of a second without JAX, Flax, Optax, Orbax or TensorFlow, and a mistyped
field fails there. `cifar_jax.experiments.study` reads, checks and runs what these build.

A study config (`configs/studies/*.py:get_config(scale)`, scale full | cheap_full | cpu | smoke) holds

    config.seed, config.num_seeds, config.data.*   shared by every experiment
    config.study.{name, title, scale, config_path, source, evidence_dir, deviations}
    config.experiments.<E4_1>                      `experiment(...)`: a sweep config in `.config`
    config.claims.<C4_1>                           `claim(...)`: the test of one of the study's claims
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import ml_collections

from cifar_jax.errors import ConfigError

SCALES = ("full", "cheap_full", "cpu", "smoke")
# :cheap_full is the study's own training (every `by_scale` value of :full) for just the experiments
# a 2-core CPU affords (`experiment(cpu_cheap=True)`, STUDIES.md §7.1), with CHEAP_FULL_SEEDS seeds;
# the others are not run. Verdicts at both are full-scale verdicts.
FULL_SCALES = ("full", "cheap_full")
CHEAP_FULL_SEEDS = 3
ALPHA = 0.05
# greater / less: a's mean above / below b's (Welch), or, with `c` and `d`, the interaction
# (a - b) - (c - d) above / below 0; equal: equivalence within `margin` (two one-sided tests);
# best: a above every setting of `others` (each by Welch; the largest p decides);
# collapsed: a's runs fail (collapse or near chance), counted against b's when b is given.
EXPECTATIONS = ("greater", "less", "equal", "best", "collapsed", "untested")
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


def check_scale(scale: str) -> str:
    """The config argument of a study: full | cheap_full | cpu | smoke (ConfigError otherwise)."""
    if scale not in SCALES:
        raise ConfigError(f"study scale {scale!r} is unknown; use :{' | :'.join(SCALES)}")
    return scale


def by_scale(scale: str, full: Any, cpu: Any, smoke: Any) -> Any:
    """The value for this scale (:cheap_full takes :full's): study configs write every
    scale-dependent choice in one line."""
    return {"full": full, "cheap_full": full, "cpu": cpu, "smoke": smoke}[check_scale(scale)]


def study_config(*, name: str, title: str, scale: str, config_path: str, source: str, num_seeds: int,
                 data_dir: str, train_limit: int, val_size: float, execution: ml_collections.ConfigDict,
                 test_limit: int = 0, evidence_dir: str | None = None, deviations: Sequence[str] = (),
                 compare_scales: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The top level of a study config. `execution` is the project's default execution section
    (its multi-host fields are set once for the whole study). `evidence_dir` (relative to the
    directory the command runs in) holds the committed per-run results, one JSON per experiment
    (default docs/studies/<name>/evidence); `deviations` say, one sentence each, where our models
    or protocol differ from the study's. `compare_scales`: scales whose committed evidence (each in
    its own config's `evidence_dir`) the report judges too and shows beside its own verdicts, so a
    full-scale report names the reduced-scale effects that were short-horizon artefacts. At
    :cheap_full `num_seeds` is CHEAP_FULL_SEEDS. Experiments and claims run and are reported in key
    order (a ConfigDict sorts its keys: 'E0_02' keeps E0.2 before E0.10)."""
    config = ml_collections.ConfigDict()
    config.name = f"study_{name}"
    config.seed = 0
    config.num_seeds = CHEAP_FULL_SEEDS if scale == "cheap_full" else num_seeds
    config.execution = execution.copy_and_resolve_references()
    config.data = ml_collections.ConfigDict({"dir": data_dir, "source": "auto", "tfds_data_dir": "",
                                             "train_limit": train_limit, "test_limit": test_limit,
                                             "val_size": float(val_size)})
    config.study = ml_collections.ConfigDict({
        "name": name, "title": title, "scale": check_scale(scale), "config_path": config_path, "source": source,
        "evidence_dir": f"docs/studies/{name}/evidence" if evidence_dir is None else evidence_dir,
        "deviations": tuple(deviations), "compare_scales": tuple(check_scale(s) for s in compare_scales)})
    config.experiments = ml_collections.ConfigDict()
    config.claims = ml_collections.ConfigDict()
    return config


def experiment(config: ml_collections.ConfigDict, *, ids: Sequence[str], title: str, kind: str = "grid",
               axes: Sequence[tuple[str, Sequence[Any]]] = (), labels: Sequence[str] = (),
               reported: Sequence[tuple[str, float, str, str]] = (), metric: str = "val_accuracy",
               needs_full_scale: bool = False, missing: str = "", torch_images_per_s: float = 0.0,
               figure: str = "", columns: Sequence[str] = (), curves: Sequence[str] = (),
               analysis: str = "", fold_reference: str = "", step_curves: Sequence[str] = (),
               cpu_cheap: bool = False) -> ml_collections.ConfigDict:
    """One experiment of a study: `config` (a training config) swept over `axes`.

    `ids`: the STUDIES.md experiments (E4.1, ...) or flaws (F4.5) it reproduces.
    `reported`: the study's numbers as (setting label, value as the study printed it (% for
    accuracies), where it was read (split, epoch), our METRIC_TITLES key to compare with).
    `missing`: why this code cannot run the experiment (listed in the report, never faked).
    `torch_images_per_s`: PyTorch's measured training rate for this model and batch size (0 = not
    measured), for the estimate of what the runs would cost one after another in PyTorch.
    `columns`: more of our metrics shown for every setting; `curves`: per-epoch metrics plotted as
    learning curves; `analysis`: 'gates' (the block CNN's branch weights) or 'output_correlation';
    `fold_reference`: for single cross-validation folds trained as a chain, the key of the
    experiment that trained the same folds fresh (the report then shows the leak).
    `cpu_cheap`: a 2-core CPU can run it at the study's own scale (STUDIES.md §7.1): :cheap_full runs it.
    """
    swept = config.copy_and_resolve_references()
    swept.sweep = ml_collections.ConfigDict({"kind": kind, "axes": tuple(axes), "constraints": (),
                                             "metric": metric, "alpha": ALPHA, "labels": tuple(labels)})
    return ml_collections.ConfigDict({
        "ids": tuple(ids), "title": title, "config": swept, "reported": tuple(tuple(r) for r in reported),
        "needs_full_scale": needs_full_scale, "missing": missing,
        "torch_images_per_s": float(torch_images_per_s), "figure": figure, "columns": tuple(columns),
        "curves": tuple(curves), "analysis": analysis, "fold_reference": fold_reference,
        "step_curves": tuple(step_curves), "cpu_cheap": bool(cpu_cheap)})


def claim(text: str, a: str = "", b: str = "", *, expect: str, metric: str = "val_accuracy", note: str = "",
          c: str = "", d: str = "", others: Sequence[str] = (), margin: float = 0.0,
          any_scale: bool | None = None) -> ml_collections.ConfigDict:
    """A claim and the test of it; settings are written 'E4_1:label'.

    expect: see EXPECTATIONS. `margin`: for expect='equal', the largest difference (in the
    metric's display units: points of %, or loss) that still counts as "no difference".
    `any_scale`: whether the test's outcome holds at any training length and data size (a collapse,
    a no-op layer, a leak), so a reduced-scale run may support or refute it; by default only
    collapse counts do. Elsewhere a reduced scale says only "consistent", "not reproduced at this
    scale" or "inconclusive". `note`: why a claim is untested, or what the test leaves out.
    """
    return ml_collections.ConfigDict({
        "text": text, "a": a, "b": b, "c": c, "d": d, "others": tuple(others), "expect": expect,
        "metric": metric, "note": note, "margin": float(margin),
        "any_scale": expect == "collapsed" if any_scale is None else bool(any_scale)})


def display_id(key: str) -> str:
    """Claim keys: 'C0_02' -> 'C0.2', 'C4_2b' -> 'C4.2b' (config keys cannot hold dots; zero-padding
    keeps them in order, since ConfigDict sorts its keys)."""
    match = re.fullmatch(r"([A-Za-z]+\d+)_0*(\d+)(\w*)", key)
    return f"{match.group(1)}.{match.group(2)}{match.group(3)}" if match else key
