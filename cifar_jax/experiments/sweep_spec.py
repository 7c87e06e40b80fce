"""The sweep spec (`config.sweep`) and what it is written in: dotted config-field paths with
their get/set, and the constraint language (Python-like boolean expressions, parsed with `ast` and
evaluated by a whitelist, never `eval`). Pure: no files, no training; `sweep` expands and runs."""

from __future__ import annotations

import ast
import dataclasses
import operator
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from cifar_jax import checks, config_paths
from cifar_jax.core import runs
from cifar_jax.errors import ConfigError
from cifar_jax.experiments import report

KINDS = ("grid", "zip", "one_factor")
# Config field -> the name of the traced hyperparameter (`runs.TRACED_HPARAMS`) that overrides it.
TRACED_FIELDS = {field: name for name, field in runs.TRACED_HPARAMS.items()}


# ----------------------------------------------------------------------------- config fields

def _in_sweep(prefix: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`config_paths` with its errors said to come from the sweep spec."""
    try:
        return fn(*args)
    except ConfigError as error:
        raise ConfigError(f"{prefix}: {error}") from None


def parse_field(field: str) -> tuple[str, int | None]:
    """'model.kernel_size[1]' -> ('model.kernel_size', 1); a plain path -> (path, None)."""
    return _in_sweep("sweep.axes", config_paths.parse, field)


def get_field(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of a dotted field (or tuple element); ConfigError naming it when absent."""
    return _in_sweep("sweep", config_paths.get, config, field)


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    """Sets a dotted field (or one element of a tuple field) of an unlocked config, type-checked."""
    _in_sweep("sweep", config_paths.assign, config, field, value)


def with_values(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with `values` (field -> value) applied."""
    return _in_sweep("sweep", config_paths.with_values, config, values)


as_config_value = config_paths.as_config_value


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
    alpha = checks.number(config, "sweep.alpha", above=0, below=1, hint="e.g. 0.05") if "alpha" in sweep \
        else report.ALPHA
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


def check_traced_value(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    """Traced values skip the config's own checks (they go into hparam_grid): check them here."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"sweep.axes: {field}={value!r} must be a number")
    try:
        runs.traced_values(with_values(config, {field: float(value)}))  # the run's own checks
    except ConfigError as error:
        raise ConfigError(f"sweep.axes: {error}") from None


