"""One vocabulary for config checks: every message reads `section.field=value must ...; hint`.

Checks take the whole config and a dotted field name, so the message always names the field the
user typed. `all_of` runs independent checks and reports every failure at once, so a user fixes
an inconsistent config in one round instead of one refusal per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from cifar_jax.errors import ConfigError


def value_of(config: Any, field: str) -> Any:
    for part in field.split("."):
        config = config[part]
    return config


def _fail(field: str, value: Any, requirement: str, hint: str = "") -> ConfigError:
    return ConfigError(f"{field}={value!r} {requirement}" + (f"; {hint}" if hint else ""))


def number(config: Any, field: str, *, low: float | None = None, above: float | None = None,
           below: float | None = None, high: float | None = None, hint: str = "") -> float:
    """A finite float within the given bounds (low/high inclusive, above/below exclusive)."""
    value = value_of(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(field, value, "must be a finite number", hint)
    bounds = [(low, lambda v, b: v >= b, ">="), (above, lambda v, b: v > b, ">"),
              (below, lambda v, b: v < b, "<"), (high, lambda v, b: v <= b, "<=")]
    for bound, holds, symbol in bounds:
        if bound is not None and not holds(value, bound):
            raise _fail(field, value, f"must be {symbol} {bound:g}", hint)
    return float(value)


def integer(config: Any, field: str, *, low: int, hint: str = "") -> int:
    value = value_of(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(field, value, f"must be an integer >= {low}", hint)
    return value


def positive_int(config: Any, field: str, hint: str = "") -> int:
    return integer(config, field, low=1, hint=hint)


def choice(config: Any, field: str, choices: Sequence[str]) -> str:
    value = value_of(config, field)
    if value not in choices:
        raise _fail(field, value, "is unknown", f"use one of {', '.join(choices)}")
    return value


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
