"""Studies: a study config (written with `cifar_jax.experiments.dsl`) lists experiments, each a
sweep, and claims; `run_study` trains the experiments and writes a report that puts the study's
own numbers beside ours and gives each claim a verdict (`verdicts`, `study_report`).

`run_study(config, workdir)` trains experiment E into `workdir/E/` with `sweep.run_sweep`
(finished experiments are skipped, an interrupted one resumes group by group; an experiment whose
committed evidence in `config.study.evidence_dir` matches its config is not trained at all) and
writes its evidence to `workdir/evidence/E.json` when it finishes; then `study_report` renders
`workdir/report.md` and `workdir/plots/` from the evidence alone, so `--mode=report` rebuilds it
from whatever has finished, or on a fresh clone from the committed evidence.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import platform
import subprocess
import time
from typing import Any, Callable, NamedTuple, Sequence

import ml_collections

from cifar_jax.core import execution
from cifar_jax.errors import ConfigError
from cifar_jax.experiments import study_report
from cifar_jax.experiments import sweep
from cifar_jax.experiments import sweep_spec
from cifar_jax.experiments import verdicts
from cifar_jax.experiments.dsl import EXPECTATIONS, METRIC_TITLES, display_id
from cifar_jax.experiments.verdicts import GRAD_NORMS
from cifar_jax.job import storage
from cifar_jax.job import workdir as workdir_lib

# Top-level fields every experiment takes from the study: seeds, data source, data size.
SHARED_FIELDS = ("seed", "num_seeds", "data.dir", "data.source", "data.tfds_data_dir", "data.train_limit",
                 "data.test_limit", "data.val_size", "execution.distributed", "execution.coordinator_address",
                 "execution.num_processes", "execution.process_id")
STUDY_FILE = "study.json"
ANALYSES = ("", "gates", "output_correlation")
STEP_METRICS = ("dead_relu_fraction", GRAD_NORMS)  # what steps.jsonl holds (log_step_metrics)


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
    not_cheap: bool = False  # at :cheap_full, an experiment a CPU cannot afford at the study's scale

    @property
    def name(self) -> str:
        """'E4.1, E4.3: CNN ablations' (headings, progress lines)."""
        return f"{', '.join(self.ids)}: {self.title}"

    @property
    def runnable(self) -> bool:
        return not self.skip_reason

    @property
    def skip_reason(self) -> str:
        if self.missing:
            return f"missing: {self.missing}"
        if self.needs_full_scale:
            return "needs :full scale"
        return "not CPU-cheap (STUDIES.md §7.1): run it at :full" if self.not_cheap else ""


def experiments(config: ml_collections.ConfigDict) -> list[Experiment]:
    """The study's experiments in config order, each with SHARED_FIELDS copied from the top level."""
    if not isinstance(config.get("experiments"), ml_collections.ConfigDict) or not config.experiments:
        raise ConfigError("config.experiments is empty: --mode=study needs a study config (configs/studies/)")
    out = []
    for key, entry in config.experiments.items():
        swept = entry.config.copy_and_resolve_references()
        swept.name = f"{config.study.name}/{key}"
        for field in SHARED_FIELDS:
            sweep_spec.set_field(swept, field, sweep_spec.get_field(config, field))
        out.append(Experiment(key=key, ids=tuple(entry.ids), title=entry.title, config=swept,
                              reported=tuple(tuple(r) for r in entry.reported),
                              needs_full_scale=bool(entry.needs_full_scale), missing=entry.missing,
                              torch_images_per_s=float(entry.torch_images_per_s), figure=entry.figure,
                              columns=tuple(entry.columns), curves=tuple(entry.curves),
                              analysis=entry.analysis, fold_reference=entry.get("fold_reference", ""),
                              step_curves=tuple(entry.get("step_curves", ())),
                              not_cheap=config.study.scale == "cheap_full" and not entry.get("cpu_cheap", False)))
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
        check_claim(display_id(key), entry, labels)
    return exps


def check_claim(name: str, entry: ml_collections.ConfigDict, labels: dict[str, list[str]]) -> None:
    """A claim's expectation, metric, margin and every setting it names."""
    if entry.expect not in EXPECTATIONS:
        raise ConfigError(f"claim {name}: expect={entry.expect!r}; use one of {', '.join(EXPECTATIONS)}")
    _check_metric(entry.metric, f"claim {name}")
    if entry.expect == "equal" and entry.get("margin", 0.0) <= 0:
        raise ConfigError(f"claim {name}: expect='equal' needs margin > 0, the largest difference that counts as "
                          "none (e.g. margin=1.0 for 1 point of accuracy)")
    if entry.expect == "best" and not entry.get("others"):
        raise ConfigError(f"claim {name}: expect='best' needs others=(...), every alternative setting")
    if bool(entry.get("c")) != bool(entry.get("d")):
        raise ConfigError(f"claim {name}: an interaction needs both c and d")
    if entry.expect == "untested":
        return
    required = [entry.a] + ([entry.b] if entry.expect in ("greater", "less", "equal") else [])
    for ref in dict.fromkeys(required + verdicts.refs(entry)):
        exp_key, label = split_ref(ref)
        if label not in labels.get(exp_key, ()):
            raise ConfigError(f"claim {name}: {ref!r} names no setting of the study (write settings as 'E4_1:label')")


def check_group(group: sweep.Group) -> None:
    """Every static check a training job runs (`validation.validate_config`), now: a study must not
    fail in its twelfth experiment for a setting the first minute could have refused. The training
    set size is a lenient guess from data.train_limit (the data are not loaded here)."""
    from cifar_jax.data import catalog as data
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
    storage.makedirs(workdir)
    state = workdir_lib.load_json(workdir, STUDY_FILE) or {"sessions": []}
    session = {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "hardware": hardware(),
               "commit": code_version(), "wall_s": 0.0}
    state["sessions"].append(session)
    start, trained, skipped = time.time(), [], []

    def save_session() -> None:  # after every experiment (a SIGKILL loses one at most) and on any exit
        session["wall_s"] = time.time() - start
        if execution.is_primary():
            workdir_lib.write_json_atomic(os.path.join(workdir, STUDY_FILE), state)

    try:
        save_session()  # before the first experiment's evidence, which quotes the session's commit and hardware
        for i, exp in enumerate(exps, start=1):
            outcome = run_experiment(config, workdir, exp, f"study: {i}/{len(exps)} {exp.key} ({exp.name})", train_fn)
            {"trained": trained, "skipped": skipped}.get(outcome, []).append(exp.key)
            save_session()
    finally:  # an interrupted session's time counts too (the report sums the sessions)
        save_session()
    execution.primary_decides(lambda: write_study_report(config, workdir) and 0)  # the same refusal everywhere
    path = os.path.join(workdir, study_report.REPORT_FILE)
    execution.primary_print(f"study: {path}")
    return {"trained": trained, "skipped": skipped, "report": path}


def run_experiment(config: ml_collections.ConfigDict, workdir: str, exp: Experiment, head: str,
                   train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None) -> str:
    """Trains one experiment unless it cannot run, has finished, or has matching committed evidence;
    writes its evidence when it has finished. Returns 'trained', 'skipped' or 'not run'."""
    exp_dir = os.path.join(workdir, exp.key)
    # Of a multi-process study, process 0 reads the files, decides and speaks; all follow.
    outcome = _OUTCOMES[execution.primary_decides(lambda: _OUTCOMES.index(_outcome(config, exp, exp_dir, head)))]
    if outcome == "trained":
        execution.primary_print(head)
        sweep.run_sweep(exp.config, exp_dir, train_fn=train_fn)
    if outcome in ("trained", "skipped"):
        execution.primary_decides(lambda: study_report.gather(config, workdir, exp, scales(config)) and 0)
    return "skipped" if outcome == "evidence" else outcome


_OUTCOMES = ("not run", "evidence", "skipped", "trained")


def _outcome(config: ml_collections.ConfigDict, exp: Experiment, exp_dir: str, head: str) -> str:
    """What `run_experiment` does with `exp`, said in a line unless it trains."""
    if not exp.runnable:
        print(f"{head}: not run ({exp.skip_reason})", flush=True)
        return "not run"
    committed = study_report.committed(config, exp, scales(config), larger_only=True)
    if not storage.exists(exp_dir) and committed:
        at = "" if committed["scale"] == config.study.scale else f" at :{committed['scale']}"
        print(f"{head}: committed evidence{at} in {config.study.evidence_dir} matches its config, skipped", flush=True)
        return "evidence"
    if experiment_done(exp, exp_dir):
        print(f"{head}: finished earlier, skipped", flush=True)
        return "skipped"
    return "trained"


def write_study_report(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes workdir/report.md, plots/ and evidence/ (`study_report`); returns the report's path."""
    compared = (config_at(config.study.config_path, scale) for scale in config.study.get("compare_scales", ()))
    return study_report.write_study_report(config, workdir, experiments(config), scales(config),
                                           [(other, experiments(other)) for other in compared if other is not None])


class ScaleView(NamedTuple):
    """The study at one scale: where its evidence is committed, and its experiments."""

    evidence_dir: str
    experiments: tuple[Experiment, ...]


def scales(config: ml_collections.ConfigDict) -> Callable[[str], ScaleView]:
    """scale -> the study at that scale (from `config.study.config_path`), so evidence committed
    at another scale is found and checked against the config it was trained with."""
    return functools.partial(_view_at, config.study.config_path)


@functools.lru_cache(maxsize=None)
def _view_at(config_path: str, scale: str) -> ScaleView:
    """An empty view where the path is not a study config file (a test's study built in code)."""
    config = config_at(config_path, scale)
    return ScaleView("", ()) if config is None else ScaleView(config.study.evidence_dir, tuple(experiments(config)))


def config_at(config_path: str, scale: str) -> ml_collections.ConfigDict | None:
    """The study config of `config_path` at `scale`; None where the path is not a study config file."""
    if not os.path.isfile(config_path) or "def get_config(" not in open(config_path).read():
        return None
    spec = importlib.util.spec_from_file_location(f"study_at_{scale}", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(scale)
