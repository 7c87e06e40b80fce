"""One vocabulary for config checks: every message reads `section.field=value must ...; hint`.

Two layers: value checks (`fail`, `finite`, `whole`, `one_of`) take the field's full name and its
value, for code that holds a section or a default-filled value (optim, augment, models, data);
config checks (`number`, `integer`, `positive_int`, `choice`) take the whole config and a dotted
field name, so the message always names the field the user typed. `all_of` runs independent
checks and reports every failure at once, so a user fixes an inconsistent config in one round
instead of one refusal per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from cifar_jax import config_paths
from cifar_jax.errors import ConfigError


def fail(field: str, value: Any, requirement: str, hint: str = "") -> ConfigError:
    """The error for `field=value` breaking `requirement` ('must be ...'), with an optional fix."""
    return ConfigError(f"{field}={value!r} {requirement}" + (f"; {hint}" if hint else ""))


def finite(field: str, value: Any, *, low: float | None = None, above: float | None = None,
           below: float | None = None, high: float | None = None, hint: str = "") -> float:
    """A finite float within the given bounds (low/high inclusive, above/below exclusive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(field, value, "must be a finite number", hint)
    bounds = [(low, lambda v, b: v >= b, ">="), (above, lambda v, b: v > b, ">"),
              (below, lambda v, b: v < b, "<"), (high, lambda v, b: v <= b, "<=")]
    for bound, holds, symbol in bounds:
        if bound is not None and not holds(value, bound):
            raise fail(field, value, f"must be {symbol} {bound:g}", hint)
    return float(value)


def whole(field: str, value: Any, *, low: int, hint: str = "") -> int:
    """An int (not a bool) >= `low`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise fail(field, value, f"must be an integer >= {low}", hint)
    return value


def one_of(field: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise fail(field, value, "is unknown", f"use one of {', '.join(choices)}")
    return value


def number(config: Any, field: str, **bounds: Any) -> float:
    """`finite` for the config's field (dotted path)."""
    return finite(field, config_paths.get(config, field), **bounds)


def integer(config: Any, field: str, *, low: int, hint: str = "") -> int:
    return whole(field, config_paths.get(config, field), low=low, hint=hint)


def positive_int(config: Any, field: str, hint: str = "") -> int:
    return integer(config, field, low=1, hint=hint)


def choice(config: Any, field: str, choices: Sequence[str]) -> str:
    return one_of(field, config_paths.get(config, field), choices)


def all_of(*checks: Callable[[], Any]) -> None:
    """Runs every check; raises one ConfigError listing each failure (one per line)."""
    problems = []
    for check in checks:
        try:
            check()
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
