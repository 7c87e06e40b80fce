"""Sweeps: a spec in `config.sweep` -> groups of runs -> one table over seeds.

A *setting* assigns one value to every swept field; a *group* is the settings that one compiled
program trains together with the seeds. Fields the training core takes as traced inputs
(`TRACED_FIELDS`: learning rate, weight decay, momentum, dropout rate, label smoothing, mixup
alpha) go into the group's `config.hparam_grid`, so a learning-rate sweep is one program; fields
that change shapes (batch size, architecture, kernel sizes) make separate groups.

The spec (all fields but `axes` optional):

    config.sweep.kind = 'grid'          # grid: product of the axes | zip: i-th values together |
                                        # one_factor: one axis at a time, best value carried over
    config.sweep.axes = (               # ordered (field, values) pairs; a field is a dotted config
        ('batch_size', (4, 8)),         # path, optionally one element of a tuple field: 'x.y[0]'
        ('optim.learning_rate', (1e-3, 1e-2)),
    )
    config.sweep.constraints = ('model.conv_features[0] <= model.conv_features[1]',)
    config.sweep.metric = 'val_accuracy'  # chooses one_factor's values and the "best" of a table
    config.sweep.alpha = 0.05           # significance level of the comparison with the best
    config.sweep.labels = ()            # zip only: one name per setting (tables, directories)

Constraints are Python-like boolean expressions over config fields (the setting's values where
swept, the config's elsewhere): comparisons, and/or/not, + - * / // %, numbers, strings, tuples,
`x[i]` and len/min/max/abs. They are parsed with `ast` and evaluated by a whitelist, never `eval`.

`run_sweep(config, workdir)` trains each group in `workdir/<group name>/` with
`train.train_and_evaluate`, skips groups whose results.json is complete (resume), writes
`workdir/sweep.json` and then the report (`cifar_jax.experiments.report`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from cifar_jax.experiments import report
from cifar_jax.core import execution
from cifar_jax.experiments import stats
from cifar_jax.job import results as results_lib
from cifar_jax.job import storage, train
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.errors import CheckpointError, ConfigError, WorkdirInUse
from cifar_jax.experiments.sweep_spec import (TRACED_FIELDS, Spec, check_traced_value, as_config_value, get_field,
                                              parse_field, read_spec, satisfies, with_values)

SWEEP_FILE = report.SWEEP_FILE


# ----------------------------------------------------------------------------- expansion

@dataclasses.dataclass(frozen=True)
class SettingSpec:
    """One setting of a group: its label, every swept field's value, and the hparam_grid values
    (traced name -> value) that identify it among the group's settings in results.json."""

    label: str
    values: dict[str, Any]
    grid: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Group:
    """The settings one program trains (with all seeds), in the subdirectory `name`."""

    name: str
    config: ml_collections.ConfigDict
    fixed: dict[str, Any]  # swept shape fields, set in `config`
    traced: dict[str, tuple[Any, ...]]  # swept traced fields -> values, in `config.hparam_grid`
    settings: tuple[SettingSpec, ...]
    stage: int = 0
    axis: str | None = None  # one_factor: the field this stage sweeps

    def record(self) -> dict[str, Any]:
        """The JSON form written to sweep.json (and read by the report)."""
        return {"name": self.name, "stage": self.stage, "axis": self.axis, "fixed": self.fixed,
                "traced": {k: list(v) for k, v in self.traced.items()},
                "settings": [dataclasses.asdict(s) for s in self.settings]}


def training_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config without `sweep`: what every group trains from (and what its workdir stores)."""
    copy = config.copy_and_resolve_references()
    copy.unlock()
    if "sweep" in copy:
        del copy["sweep"]
    return copy


def short_names(fields: Sequence[str], config: ml_collections.ConfigDict | None = None) -> dict[str, str]:
    """Display names: 'optim.learning_rate' -> 'learning_rate' unless two swept fields share that
    last part; elements of a tuple field that are all swept share its name ('conv_features')."""
    leaf = {f: f.rsplit(".", 1)[-1] for f in fields}
    names = {f: leaf[f] if list(leaf.values()).count(leaf[f]) == 1 else f for f in fields}
    if config is not None:
        by_path: dict[str, list[int]] = {}
        for field in fields:
            path, index = parse_field(field)
            if index is not None:
                by_path.setdefault(path, []).append(index)
        for field in fields:
            path, index = parse_field(field)
            if index is not None and sorted(by_path[path]) == list(range(len(get_field(config, path)))):
                names[field] = path.rsplit(".", 1)[-1]
    return names


def point_label(point: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """'batch_size=4,learning_rate=0.001' (swept values in axis order); fields sharing a display
    name (all elements of one tuple) are joined in index order: 'conv_features=32-64'."""
    joined: dict[str, list[tuple[int, Any]]] = {}
    for field, value in point.items():
        joined.setdefault(names[field], []).append((parse_field(field)[1] or 0, value))
    return ",".join(f"{name}={report.format_value(items[0][1] if len(items) == 1 else tuple(v for _, v in sorted(items)))}"
                    for name, items in joined.items())


def grid_points(spec: Spec) -> list[dict[str, Any]]:
    """Settings of a grid (product, first axis slowest) or zip (i-th values together) spec."""
    fields = spec.fields
    values = [v for _, v in spec.axes]
    combos = itertools.product(*values) if spec.kind == "grid" else zip(*values)
    return [dict(zip(fields, combo)) for combo in combos]


def _is_product(parts: Sequence[tuple]) -> bool:
    """Whether traced value tuples are exactly the product of their per-field values."""
    if len(set(parts)) < len(parts):
        return False
    per_field = [list(dict.fromkeys(column)) for column in zip(*parts)]
    return set(itertools.product(*per_field)) == set(parts)


def make_groups(base: ml_collections.ConfigDict, points: Sequence[dict[str, Any]], *,
                names: Mapping[str, str], labels: Sequence[str] | None = None,
                extra: Mapping[str, Any] | None = None, stage: int = 0, axis: str | None = None,
                prefix: str = "") -> list[Group]:
    """Settings -> groups: settings with equal shape fields share a group (one program) whose
    traced fields form `hparam_grid`.

    When the traced values of a shape group are not a product (a zip of two traced axes, or a
    constraint between traced fields), hparam_grid cannot express them: each setting then
    becomes its own group (a separate compile), which is correct, only slower. `labels` are
    custom names (zip); `extra` adds unswept fields' values to the settings (one_factor).
    """
    if not points:
        raise ConfigError(f"sweep.constraints leave no settings{f' in stage {stage + 1}' if axis else ''}")
    point_labels = list(labels) if labels else [point_label(p, names) or "baseline" for p in points]
    traced = [f for f in points[0] if f in TRACED_FIELDS]
    for point in points:
        for field in traced:
            check_traced_value(base, field, point[field])
    by_shape: dict[tuple, list[int]] = {}
    for i, point in enumerate(points):
        key = tuple((f, repr(v)) for f, v in point.items() if f not in TRACED_FIELDS)
        by_shape.setdefault(key, []).append(i)
    groups = []
    for members in by_shape.values():
        if not traced and len(members) > 1:
            raise ConfigError(f"sweep.axes: the setting {point_labels[members[0]]} appears {len(members)} times")
        if traced and _is_product([tuple(points[i][f] for f in traced) for i in members]):
            batches, grid_fields = [members], traced
        else:
            batches, grid_fields = [[i] for i in members], []
        for batch in batches:
            groups.append(_group(base, [points[i] for i in batch], [point_labels[i] for i in batch], grid_fields,
                                 names, custom_name=bool(labels) and len(batch) == 1, extra=extra or {},
                                 stage=stage, axis=axis, prefix=prefix))
    _check_unique([g.name for g in groups])
    return groups


def _group(base: ml_collections.ConfigDict, points: list[dict[str, Any]], labels: list[str],
           grid_fields: list[str], names: Mapping[str, str], *, custom_name: bool, extra: Mapping[str, Any],
           stage: int, axis: str | None, prefix: str) -> Group:
    """One group: its shape fields set in the config, `grid_fields` in hparam_grid."""
    fixed = {f: v for f, v in points[0].items() if f not in grid_fields}
    traced = {f: tuple(dict.fromkeys(p[f] for p in points)) for f in grid_fields}
    config = with_values(base, fixed)
    for field, values in traced.items():
        config.hparam_grid[TRACED_FIELDS[field]] = tuple(float(v) for v in values)
    if "model.dropout_rate" in traced and max(traced["model.dropout_rate"]) > 0:
        if config.model.get("dropout_placement", "none") == "none":
            raise ConfigError("sweep.axes: model.dropout_rate is swept but model.dropout_placement='none'")
        config.model.dropout_rate = float(max(traced["model.dropout_rate"]))  # layers exist only when > 0
    own = labels[0] if custom_name else point_label(fixed, names)
    name = "/".join(part for part in (prefix, report.path_name(own) if own else "") if part) or "all"
    settings = tuple(SettingSpec(label=label, values={**point, **extra},
                                 grid={TRACED_FIELDS[f]: float(point[f]) for f in grid_fields})
                     for point, label in zip(points, labels))
    return Group(name=name, config=config, fixed=fixed, traced=traced, settings=settings, stage=stage, axis=axis)


def _check_unique(names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"sweep.axes: values that print alike give one directory name to two groups: {repeated}")


def expand(config: ml_collections.ConfigDict, chosen: Mapping[str, Any] | None = None) -> list[Group]:
    """The groups of a sweep, pure (no files, no training).

    grid / zip: every group. one_factor: the groups of every stage whose earlier axes have a
    chosen value in `chosen` (field -> value), i.e. stages 1..k+1 when k values are chosen;
    stage i's baseline is the config with the chosen values of stages 1..i-1.
    """
    spec = read_spec(config)
    base = training_config(config)
    if spec.kind != "one_factor":
        names = short_names(spec.fields, base)  # a setting holds all fields: tuples may be joined
        labelled = zip(grid_points(spec), spec.labels or [None] * len(grid_points(spec)))
        kept = [(p, label) for p, label in labelled if satisfies(base, p, spec.constraints)]
        labels = [label for _, label in kept] if spec.labels else None
        return make_groups(base, [p for p, _ in kept], names=names, labels=labels)
    chosen = dict(chosen or {})
    names = short_names(spec.fields)  # a stage's setting holds one field: never joined
    groups = []
    for stage, (field, values) in enumerate(spec.axes):
        stage_base = with_values(base, {f: chosen[f] for f in spec.fields[:stage]})
        points = [{field: v} for v in values if satisfies(stage_base, {field: v}, spec.constraints)]
        extra = {f: get_field(stage_base, f) for f in spec.fields if f != field}
        groups += make_groups(stage_base, points, names=names, extra=extra, stage=stage, axis=field,
                              prefix=report.path_name(f"{stage + 1}-{names[field]}"))
        if field not in chosen:
            break
    return groups


# ----------------------------------------------------------------------------- running

def group_done(group: Group, group_dir: str) -> bool:
    """Whether `group_dir` holds this group's finished results (so the group is skipped).

    Refuses a directory trained with another config (a changed spec), which would otherwise
    silently report stale numbers.
    """
    stored = workdir_lib.load_json(group_dir, workdir_lib.CONFIG_FILE)
    if stored is not None:
        differing = workdir_lib.differing_fields(stored, workdir_lib.config_to_dict(group.config))
        if differing:
            raise CheckpointError(f"{group_dir} was trained with another config ({', '.join(differing[:4])}); "
                                  "use a new --workdir for a changed sweep")
        if group.config.checkpoint.get("overwrite", False):
            return False  # training moves the old run aside
    results = workdir_lib.load_json(group_dir, "results.json")
    return results is not None and results.get("num_epochs", group.config.num_epochs) >= group.config.num_epochs


def preflight(groups: Sequence[Group]) -> None:
    """Builds nothing, but checks every group's model against its data set's image shape, so a
    bad combination fails now rather than hours into the sweep."""
    from cifar_jax.data import catalog as data
    from cifar_jax import models

    for group in groups:
        name = group.config.data.name
        if name not in data.IMAGE_SHAPES:
            continue  # the training core reports an unknown data set itself
        try:
            models.validate_model_config(group.config.model, data.IMAGE_SHAPES[name], len(data.CLASS_NAMES[name]))
        except ConfigError as error:
            raise ConfigError(f"sweep group {group.name}: {error}") from None


def choose(settings: Sequence[report.Setting], field: str, metric: str) -> Any:
    """one_factor: the value of `field` in the setting with the best mean `metric` (first on ties)."""
    means = [stats.mean(s.sample(metric)) for s in settings]
    scored = [(m if results_lib.lower_is_better(metric) else -m, i) for i, m in enumerate(means) if not math.isnan(m)]
    if not scored:
        raise ConfigError(f"sweep.axes {field}: no run of this stage has a finite {metric} "
                          "(all diverged?); nothing to carry over")
    return as_config_value(settings[min(scored)[1]].values[field])


def write_plan(workdir: str, config: ml_collections.ConfigDict, spec: Spec, groups: Sequence[Group],
               chosen: Mapping[str, Any]) -> None:
    """sweep.json: the spec, the groups so far and the values one_factor carried over."""
    storage.makedirs(workdir)
    payload = {"name": config.get("name", ""), "num_seeds": config.num_seeds, "num_epochs": config.num_epochs,
               **spec.record(), "chosen": dict(chosen),
               "groups": [g.record() for g in groups]}
    workdir_lib.write_json_atomic(os.path.join(workdir, SWEEP_FILE), payload)


def worker_share(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(this worker's index, the number of workers): `sweep.worker_index` / `sweep.num_workers`,
    else a SLURM array task's id and count, else (0, 1)."""
    spec = config.sweep
    count = int(spec.get("num_workers", 0)) or int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))
    index = int(spec.get("worker_index", -1))
    if index < 0:  # array ids may start anywhere (--array=1-4)
        index = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"sweep.worker_index={index} must be in [0, sweep.num_workers={count})")
    return index, count


def worker_order(groups: Sequence[Group], index: int, count: int) -> list[Group]:
    """This worker's share of the groups (every `count`-th from `index`) first, then the others'
    (taken over when their workers are done or dead: claims keep two workers off one group)."""
    return list(groups[index::count]) + [g for i, g in enumerate(groups) if i % count != index]


_TRAIN, _BUSY, _DONE = 0, 1, 2  # what a worker does with a group (process 0 decides for a multi-process job)


def _claim(group: Group, group_dir: str, claim: contextlib.ExitStack) -> int:
    """_TRAIN holding the group's lock in `claim`, or _BUSY / _DONE (skipped), with the line."""
    try:
        claim.enter_context(workdir_lib.workdir_lock(group_dir))
    except WorkdirInUse:
        print(f"sweep: group {group.name}: being trained by another worker, skipped", flush=True)
        return _BUSY
    if group_done(group, group_dir):
        print(f"sweep: group {group.name}: finished earlier, skipped", flush=True)
        return _DONE
    return _TRAIN


def train_unclaimed(groups: Sequence[Group], workdir: str, index: int, count: int,
                    train_fn: Callable[[ml_collections.ConfigDict, str], Any]) -> bool:
    """Trains every group that is neither finished nor claimed by a live worker; a group is
    claimed by holding its directory's lock (released by the OS if the worker dies, so a rerun
    resumes it). Of a multi-process worker, process 0 claims and every process follows its
    decision. Returns whether all groups are finished."""
    for group in worker_order(groups, index, count):
        group_dir = os.path.join(workdir, group.name)
        with contextlib.ExitStack() as claim:
            if execution.primary_decides(lambda: _claim(group, group_dir, claim)) != _TRAIN:
                continue
            execution.primary_print(f"sweep: worker {index + 1}/{count}, group {group.name}: {_describe(group)}")
            train_fn(group.config, group_dir)
    return bool(execution.primary_decides(
        lambda: all(group_done(group, os.path.join(workdir, group.name)) for group in groups)))


def run_sweep(config: ml_collections.ConfigDict, workdir: str,
              train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None) -> dict[str, Any]:
    """Trains this worker's groups (skipping finished ones, resuming an interrupted one, taking
    over unclaimed ones), then reports once every group has finished.

    Returns {'groups': names, 'chosen': one_factor's values, 'report': written paths or None when
    groups are still training elsewhere}.
    """
    train_fn = train_fn or train.train_and_evaluate
    spec = read_spec(config)
    index, count = worker_share(config)
    chosen: dict[str, Any] = {}
    while True:
        groups = expand(config, chosen)
        preflight(groups)
        execution.primary_decides(lambda: write_plan(workdir, config, spec, groups, chosen))
        if not train_unclaimed(groups, workdir, index, count, train_fn):
            execution.primary_print("sweep: other workers are still training; the last one to finish writes the "
                                    "report (or run --mode=report)")
            return {"groups": [g.name for g in groups], "chosen": chosen, "report": None}
        if spec.kind != "one_factor" or len(chosen) == len(spec.axes):
            break
        stage = len(chosen)
        field = spec.fields[stage]
        records = [g.record() for g in groups if g.stage == stage]
        chosen[field] = choose(report.load_settings(workdir, records), field, spec.metric)
        execution.primary_print(f"sweep: stage {stage + 1} chose {field}={report.format_value(chosen[field])}")
    paths: dict[str, Any] = {}
    execution.primary_decides(lambda: paths.update(  # process 0 writes it
        write_sweep_report(workdir, tensorboard=bool(config.get("tensorboard", True))) or {}))
    return {"groups": [g.name for g in groups], "chosen": chosen, "report": paths or None}


def write_sweep_report(workdir: str, *, tensorboard: bool = True) -> dict[str, Any] | None:
    """results.md, results.csv and plots/ (and TensorBoard, with `tensorboard`) from the groups
    finished so far (the end of a sweep, or `--mode=report`), under the sweep root's lock: of two
    workers finishing together one writes it; returns the paths, or None when another process is
    writing it."""
    if not storage.exists(os.path.join(workdir, SWEEP_FILE)):
        raise CheckpointError(f"{workdir} holds no sweep (no {SWEEP_FILE}); run --mode=sweep with this config first")
    try:
        with workdir_lib.workdir_lock(workdir):
            paths = report.write_report(workdir, tensorboard=tensorboard)
    except WorkdirInUse:
        print("sweep: another worker is writing the report", flush=True)
        return None
    print(f"sweep: {paths['markdown']}", flush=True)
    return paths


def _describe(group: Group) -> str:
    runs = len(group.settings) * group.config.num_seeds
    traced = ", ".join(f"{f} x{len(v)}" for f, v in group.traced.items())
    return f"{len(group.settings)} setting(s) x {group.config.num_seeds} seeds = {runs} runs in one program" + (
        f" (traced: {traced})" if traced else "")
