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

import ast
import contextlib
import dataclasses
import itertools
import math
import operator
import os
import re
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from cifar_jax.experiments import report
from cifar_jax.core import execution
from cifar_jax.core import runs
from cifar_jax.job import train
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.errors import CheckpointError, ConfigError, WorkdirInUse

KINDS = ("grid", "zip", "one_factor")
# Config field -> the name of the traced hyperparameter (`runs.TRACED_HPARAMS`) that overrides it.
TRACED_FIELDS = {field: name for name, field in runs.TRACED_HPARAMS.items()}
SWEEP_FILE = report.SWEEP_FILE


# ----------------------------------------------------------------------------- config fields

_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\[(\d+)\])?$")


def parse_field(field: str) -> tuple[str, int | None]:
    """'model.kernel_size[1]' -> ('model.kernel_size', 1); a plain path -> (path, None)."""
    match = _FIELD.match(field) if isinstance(field, str) else None
    if not match:
        raise ConfigError(f"sweep.axes: {field!r} is not a config field path like 'optim.learning_rate' or 'x.y[0]'")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def get_field(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of a dotted field (or tuple element); ConfigError naming it when absent."""
    path, index = parse_field(field)
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"sweep: {field!r} is not a field of the config")
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"sweep: {field!r} is a group of fields, not a value")
    if index is None:
        return node
    if not isinstance(node, (tuple, list)) or index >= len(node):
        raise ConfigError(f"sweep: {field!r}: {path}={node!r} has no element {index}")
    return node[index]


def as_config_value(value: Any) -> Any:
    """Lists (from JSON or a command line) become tuples, as config tuple fields expect."""
    return tuple(as_config_value(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    """Sets a dotted field (or one element of a tuple field) of an unlocked config, type-checked."""
    path, index = parse_field(field)
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    value = as_config_value(value)
    if index is not None:
        current = list(get_field(config, path))
        current[index] = value
        value = tuple(current)
    try:
        node[leaf] = value
    except TypeError as error:
        raise ConfigError(f"sweep: {field}={value!r} does not fit the field's type ({error})") from None


def with_values(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with `values` (field -> value) applied."""
    copy = config.copy_and_resolve_references()
    copy.unlock()
    for field, value in values.items():
        set_field(copy, field, value)
    return copy


# ----------------------------------------------------------------------------- constraints

_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_FUNCTIONS = {"len": len, "min": min, "max": max, "abs": abs}
_ALLOWED = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
            ast.Compare, ast.BinOp, ast.Constant, ast.Tuple, ast.List, ast.Name, ast.Attribute,
            ast.Subscript, ast.Call, ast.Load, *_COMPARE, *_BINARY)


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` written as Name/Attribute nodes -> 'a.b.c'."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def parse_constraint(text: str) -> ast.Expression:
    """Parses and whitelists one constraint; ConfigError naming it otherwise."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, TypeError, ValueError) as error:
        raise ConfigError(f"sweep.constraints: {text!r} is not an expression ({error})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ConfigError(f"sweep.constraints: {text!r} uses {type(node).__name__}, which is not allowed")
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS
                                           or node.keywords):
            raise ConfigError(f"sweep.constraints: {text!r}: only {', '.join(_FUNCTIONS)}(...) may be called")
        if isinstance(node, ast.Attribute) and _dotted(node) is None:
            raise ConfigError(f"sweep.constraints: {text!r}: attributes only of config field names")
    return tree


def constraint_fields(tree: ast.AST) -> set[str]:
    """The dotted config fields a constraint reads (function names excluded)."""
    if isinstance(tree, (ast.Name, ast.Attribute)):
        return {_dotted(tree)}
    children = tree.args if isinstance(tree, ast.Call) else list(ast.iter_child_nodes(tree))
    return set().union(*(constraint_fields(child) for child in children))


def evaluate(node: ast.AST, lookup: Callable[[str], Any]) -> Any:
    """Evaluates a whitelisted constraint tree; names are resolved by `lookup`."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body, lookup)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        return lookup(_dotted(node))
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(evaluate(e, lookup) for e in node.elts)
    if isinstance(node, ast.BoolOp):
        values = (evaluate(v, lookup) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        value = evaluate(node.operand, lookup)
        return {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}[type(node.op)](value)
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](evaluate(node.left, lookup), evaluate(node.right, lookup))
    if isinstance(node, ast.Compare):
        left = evaluate(node.left, lookup)
        for op, right_node in zip(node.ops, node.comparators):
            right = evaluate(right_node, lookup)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        return evaluate(node.value, lookup)[evaluate(node.slice, lookup)]
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](*(evaluate(a, lookup) for a in node.args))
    raise ConfigError(f"sweep.constraints: unsupported {type(node).__name__}")


def satisfies(config: ml_collections.ConfigDict, point: Mapping[str, Any],
              constraints: Sequence[tuple[str, ast.Expression]]) -> bool:
    """Whether the setting `point` (field -> value) on top of `config` meets every constraint."""
    if not constraints:
        return True
    full = with_values(config, point)
    for text, tree in constraints:
        try:
            if not evaluate(tree, lambda name: get_field(full, name)):
                return False
        except (TypeError, IndexError, ZeroDivisionError) as error:
            raise ConfigError(f"sweep.constraints: {text!r} fails for {point}: {error}") from None
    return True


# ----------------------------------------------------------------------------- the spec

@dataclasses.dataclass(frozen=True)
class Spec:
    """`config.sweep`, validated."""

    kind: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    constraints: tuple[tuple[str, ast.Expression], ...]
    metric: str
    alpha: float
    labels: tuple[str, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(field for field, _ in self.axes)

    def record(self) -> dict[str, Any]:
        """The JSON form written to sweep.json."""
        return {"kind": self.kind, "axes": [[f, list(v)] for f, v in self.axes],
                "constraints": [text for text, _ in self.constraints], "metric": self.metric,
                "alpha": self.alpha, "labels": list(self.labels)}


def read_spec(config: ml_collections.ConfigDict) -> Spec:
    """Validates `config.sweep`; every error is one line naming the field."""
    sweep = config.get("sweep")
    if not isinstance(sweep, ml_collections.ConfigDict):
        raise ConfigError("sweep is not set: --mode=sweep needs a config with config.sweep (see configs/sweeps/)")
    kind = sweep.get("kind", "grid")
    if kind not in KINDS:
        raise ConfigError(f"sweep.kind={kind!r} is unknown; use one of {', '.join(KINDS)}")
    axes = _read_axes(config, sweep.get("axes", ()))
    if kind == "zip" and len({len(values) for _, values in axes}) > 1:
        raise ConfigError(f"sweep.axes: zip needs equally long value lists, got "
                          f"{', '.join(f'{f}: {len(v)}' for f, v in axes)}")
    if kind != "zip" and any(len(set(map(repr, values))) < len(values) for _, values in axes):
        raise ConfigError(f"sweep.axes: a value repeats in {[f for f, v in axes if len(set(map(repr, v))) < len(v)]}")
    if kind == "one_factor" and not axes:
        raise ConfigError("sweep.axes is empty: one_factor needs at least one axis")
    constraints = tuple((text, parse_constraint(text)) for text in _as_tuple(sweep.get("constraints", ()),
                                                                              "sweep.constraints"))
    for text, tree in constraints:
        for name in constraint_fields(tree):
            get_field(config, name)  # raises ConfigError naming an unknown field
    metric = sweep.get("metric", "val_accuracy")
    known = [name for name, _ in report.METRICS]
    if metric not in known:
        raise ConfigError(f"sweep.metric={metric!r} is unknown; use one of {', '.join(known)}")
    alpha = float(sweep.get("alpha", report.ALPHA))
    if not 0 < alpha < 1:
        raise ConfigError(f"sweep.alpha={alpha} must be in (0, 1)")
    labels = tuple(str(label) for label in _as_tuple(sweep.get("labels", ()), "sweep.labels"))
    if labels and (kind != "zip" or any(len(values) != len(labels) for _, values in axes)):
        raise ConfigError("sweep.labels: only for kind='zip', one label per zipped setting")
    if len(set(labels)) < len(labels):
        raise ConfigError(f"sweep.labels: names repeat in {labels}")
    if dict(config.get("hparam_grid", {}) or {}):
        raise ConfigError("hparam_grid must be empty in a sweep: sweep traced values as axes instead, e.g. "
                          "('optim.learning_rate', (1e-3, 1e-2)); they still train in one program")
    return Spec(kind=kind, axes=axes, constraints=constraints, metric=metric, alpha=alpha, labels=labels)


def _as_tuple(value: Any, name: str) -> tuple:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ConfigError(f"{name} must be a tuple, got {value!r}")
    return tuple(value)


def _read_axes(config: ml_collections.ConfigDict, axes: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    out = []
    for entry in _as_tuple(axes, "sweep.axes"):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[0], str):
            raise ConfigError(f"sweep.axes: each entry must be a (field, values) pair, got {entry!r}")
        field, values = entry
        values = tuple(as_config_value(v) for v in _as_tuple(values, f"sweep.axes {field}"))
        if not values:
            raise ConfigError(f"sweep.axes: {field} has no values")
        get_field(config, field)  # raises ConfigError when the field does not exist
        if field.startswith(("sweep.", "hparam_grid.")):
            raise ConfigError(f"sweep.axes: {field} cannot be swept")
        out.append((field, values))
    bases = [parse_field(f)[0] for f, _ in out]
    for field, _ in out:
        path, index = parse_field(field)
        if [f for f, _ in out].count(field) > 1 or (index is None and bases.count(path) > 1):
            raise ConfigError(f"sweep.axes: {field} is swept twice")
    return tuple(out)


def _check_traced_value(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    """Traced values skip the config's own checks (they go into hparam_grid): check them here."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"sweep.axes: {field}={value!r} must be a number")
    try:
        runs.traced_values(with_values(config, {field: float(value)}))  # the run's own checks
    except ConfigError as error:
        raise ConfigError(f"sweep.axes: {error}") from None


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
            _check_traced_value(base, field, point[field])
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
    from cifar_jax.data import datasets as data
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
    means = [report.mean(s.sample(metric)) for s in settings]
    scored = [(m if report.minimize(metric) else -m, i) for i, m in enumerate(means) if not math.isnan(m)]
    if not scored:
        raise ConfigError(f"sweep.axes {field}: no run of this stage has a finite {metric} "
                          "(all diverged?); nothing to carry over")
    return as_config_value(settings[min(scored)[1]].values[field])


def write_plan(workdir: str, config: ml_collections.ConfigDict, spec: Spec, groups: Sequence[Group],
               chosen: Mapping[str, Any]) -> None:
    """sweep.json: the spec, the groups so far and the values one_factor carried over."""
    os.makedirs(workdir, exist_ok=True)
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
    paths = {}
    if not execution.primary_decides(lambda: _write_report(workdir, paths)):
        return {"groups": [g.name for g in groups], "chosen": chosen, "report": None}
    return {"groups": [g.name for g in groups], "chosen": chosen, "report": paths or None}


def _write_report(workdir: str, paths: dict[str, str]) -> bool:
    """Writes the report into `paths` unless another worker is writing it (then False)."""
    try:
        with workdir_lib.workdir_lock(workdir):  # two workers finishing together: one writes the report
            paths.update(report.write_report(workdir))
    except WorkdirInUse:
        print("sweep: another worker is writing the report", flush=True)
        return False
    print(f"sweep: {paths['markdown']}", flush=True)
    return True


def _describe(group: Group) -> str:
    runs = len(group.settings) * group.config.num_seeds
    traced = ", ".join(f"{f} x{len(v)}" for f, v in group.traced.items())
    return f"{len(group.settings)} setting(s) x {group.config.num_seeds} seeds = {runs} runs in one program" + (
        f" (traced: {traced})" if traced else "")
