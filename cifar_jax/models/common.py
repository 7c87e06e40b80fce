"""Config access and validation helpers shared by the model files.

Every check raises `ConfigError` with one line that names the offending field, at config time
(before any array is allocated), so a bad sweep fails before it trains anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cifar_jax import checks
from cifar_jax.errors import ConfigError
from cifar_jax.models import layers

DROPOUT_PLACEMENTS = ("none", "conv", "dense", "all", "head")
# The CNN fields of configs/default.py with their default values (tests/test_models.py keeps the
# two equal): a model with a fixed architecture (resnet18, block_cnn) ignores some of them.
CNN_FIELD_DEFAULTS = {"conv_features": (6, 16), "kernel_size": (5, 5), "strides": (1, 1), "padding": "VALID",
                      "pool": "max", "pool_size": 2, "activation": "relu", "conv_batch_norm": False,
                      "dense_batch_norm": False, "dense_features": (120, 84)}


def field(cfg: Any, name: str, default: Any = None) -> Any:
    """cfg.name, or `default` where the config lacks the field (model-specific fields)."""
    try:
        return cfg.get(name, default)
    except AttributeError:
        return getattr(cfg, name, default)


def as_tuple(value: Any) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return (value,)
    return tuple(value)


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    return checks.one_of(f"model.{name}", value, choices)


def positive_int(name: str, value: Any) -> int:
    return checks.whole(f"model.{name}", value, low=1)


def positive_ints(name: str, values: Any, *, allow_empty: bool = True) -> tuple[int, ...]:
    values = as_tuple(values)
    if not values and not allow_empty:
        raise ConfigError(f"model.{name} is empty; give at least one width")
    for i, v in enumerate(values):
        positive_int(f"{name}[{i}]", v)
    return values


def per_stage(name: str, values: Any, num_stages: int, stages_field: str) -> tuple[int, ...]:
    """One positive int per conv stage (a single int is broadcast to every stage)."""
    values = as_tuple(values)
    if len(values) == 1 and num_stages != 1:
        values = values * num_stages
    if len(values) != num_stages:
        raise ConfigError(
            f"model.{name} has {len(values)} entries but model.{stages_field} has {num_stages} "
            f"conv stages; give one value per stage")
    return positive_ints(name, values)


def common_checks(cfg: Any, input_shape: Sequence[int], num_classes: int) -> None:
    """Fields every model uses: activation, init, dropout, batch norm, conv_impl, shapes."""
    if len(tuple(input_shape)) != 3 or any(int(d) <= 0 for d in input_shape):
        raise ConfigError(f"input_shape={tuple(input_shape)} must be (height, width, channels) > 0")
    checks.whole("num_classes", num_classes, low=1)
    choice("activation", field(cfg, "activation", "relu"), tuple(layers.ACTIVATIONS))
    choice("init", field(cfg, "init", "torch_default"), layers.INIT_SCHEMES)
    choice("dropout_placement", field(cfg, "dropout_placement", "none"), DROPOUT_PLACEMENTS)
    choice("conv_impl", field(cfg, "conv_impl", "auto"), ("auto", *layers.CONV_IMPLS))
    rate = checks.finite("model.dropout_rate", field(cfg, "dropout_rate", 0.0), low=0, below=1)
    placement = field(cfg, "dropout_placement", "none")
    if conv_dropout_kind(cfg) == "channel" and rate > 0 and placement not in ("conv", "all"):
        raise ConfigError(f"model.dropout_kind='channel' drops conv feature maps, but model.dropout_placement="
                          f"{placement!r} places no dropout in conv stages; use 'conv' or 'all', or kind 'element'")
    checks.finite("model.bn_momentum", field(cfg, "bn_momentum", 0.9), low=0, high=1,
                  hint="Flax convention: PyTorch's 0.1 is 0.9")


def check_ignored(cfg: Any, model_name: str, ignored: Sequence[str]) -> None:
    """Refuses a non-default value of a field `model_name` never reads: it would train the same
    model as the default (a sweep over it would report seed noise as an effect)."""
    changed = [name for name in ignored
               if _comparable(field(cfg, name, CNN_FIELD_DEFAULTS[name])) != _comparable(CNN_FIELD_DEFAULTS[name])]
    if changed:
        values = ", ".join(f"model.{name}={field(cfg, name)!r}" for name in changed)
        raise ConfigError(f"{values}: model.name={model_name!r} ignores {'it' if len(changed) == 1 else 'them'}; "
                          f"leave {'it' if len(changed) == 1 else 'them'} at the default or choose another model")


def _comparable(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def conv_dropout_kind(cfg: Any) -> str:
    """The dropout kind of conv stages (dense layers always drop elements)."""
    return choice("dropout_kind", field(cfg, "dropout_kind", "element"), layers.DROPOUT_KINDS)


def head_spec(cfg: Any, widths: Any, *, batch_norm: bool | None = None) -> layers.DenseHeadSpec:
    """The dense head a model config asks for (`widths` hidden layers; batch norm from
    `dense_batch_norm` unless the model fixes it)."""
    placement = field(cfg, "dropout_placement", "none")
    return layers.DenseHeadSpec(
        widths=tuple(int(f) for f in as_tuple(widths)), activation=field(cfg, "activation", "relu"),
        batch_norm=bool(field(cfg, "dense_batch_norm", False)) if batch_norm is None else batch_norm,
        bn_momentum=float(field(cfg, "bn_momentum", 0.9)), rate=float(field(cfg, "dropout_rate", 0.0)),
        hidden_dropout=placement in ("dense", "all"), head_dropout=placement == "head", init=dense_init(cfg))


def dense_init(cfg: Any) -> str:
    """The init scheme of dense layers: `init`, or torch_default when init_conv_only is set."""
    return "torch_default" if field(cfg, "init_conv_only", False) else field(cfg, "init", "torch_default")
