"""Config fields by dotted path ('optim.learning_rate', 'model.kernel_size[1]'): the one reader and
writer for code that names fields as strings (checks, traced grids, sweeps, tests)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from cifar_jax.errors import ConfigError

_PATH = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\[(\d+)\])?$")


def parse(path: str) -> tuple[str, int | None]:
    """'model.kernel_size[1]' -> ('model.kernel_size', 1); a plain path -> (path, None)."""
    match = _PATH.match(path) if isinstance(path, str) else None
    if not match:
        raise ConfigError(f"{path!r} is not a config field path like 'optim.learning_rate' or 'x.y[0]'")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def _node(config: Any, dotted: str, path: str) -> Any:
    """What `dotted` names in `config`: a value or a group of fields."""
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(f"{path!r} is not a field of the config") from None
    return node


def get(config: Any, path: str) -> Any:
    """The value at `path` (a tuple element with '[i]'); a ConfigError naming it when absent or
    when it names a group of fields."""
    dotted, index = parse(path)
    node = _node(config, dotted, path)
    if isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"{path!r} is a group of fields, not a value")
    if index is None:
        return node
    if not isinstance(node, (tuple, list)) or index >= len(node):
        raise ConfigError(f"{path!r}: {dotted}={node!r} has no element {index}")
    return node[index]


def as_config_value(value: Any) -> Any:
    """Lists (from JSON or a command line) become tuples, as config tuple fields expect."""
    return tuple(as_config_value(v) for v in value) if isinstance(value, (list, tuple)) else value


def assign(config: Any, path: str, value: Any) -> None:
    """Sets the field at `path` (or one element of a tuple field) of an unlocked config; a value
    that does not fit the field's type is a ConfigError naming it."""
    dotted, index = parse(path)
    *parents, leaf = dotted.split(".")
    node = _node(config, ".".join(parents), path) if parents else config
    value = as_config_value(value)
    if index is not None:
        elements = list(get(config, dotted))
        elements[index] = value
        value = tuple(elements)
    try:
        node[leaf] = value
    except TypeError as error:
        raise ConfigError(f"{path}={value!r} does not fit the field's type ({error})") from None


def with_values(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with `values` (path -> value) assigned."""
    copy = config.copy_and_resolve_references()
    copy.unlock()
    for path, value in values.items():
        assign(copy, path, value)
    return copy
