"""Models by name: `create_model(config.model, input_shape=..., num_classes=..., rngs=...)`.

Every model is a Flax NNX module taking float32 NHWC normalised images and returning logits
(N, num_classes). Modules are built in training mode; `model.eval()` / `model.train()` switch
dropout and batch norm. Build with `nnx.Rngs(params=key1, dropout=key2)`: the dropout stream is
stored in the model state, so under `jax.vmap` each seed has its own dropout randomness.

`validate_model_config` runs every check `create_model` would, without allocating anything, and
raises `cifar_jax.errors.ConfigError` with a one-line message naming the field.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from cifar_jax.errors import ConfigError
from cifar_jax.models import block, cnn, resnet
from cifar_jax.models.layers import Compute, Dropout, DropoutRate

_REGISTRY: dict[str, tuple[Callable[..., nnx.Module], Callable[..., None]]] = {
    "cnn": (cnn.CNN, cnn.validate),
    "mlp": (lambda cfg, **kwargs: cnn.CNN(cnn.mlp_config(cfg), **kwargs),
            lambda cfg, *args: cnn.validate(cnn.mlp_config(cfg), *args)),
    "block_cnn": (block.BlockCNN, block.validate),
    "resnet18": (resnet.ResNet18, resnet.validate),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

__all__ = ["MODEL_NAMES", "create_model", "validate_model_config", "Dropout", "DropoutRate",
           "Compute"]


def _lookup(model_config: Any):
    name = model_config.get("name", None) if hasattr(model_config, "get") else None
    if name not in _REGISTRY:
        raise ConfigError(f"model.name={name!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    return _REGISTRY[name]


def validate_model_config(model_config: Any, input_shape: tuple[int, int, int],
                          num_classes: int) -> None:
    """Raise ConfigError (one line, naming the field) if the model cannot be built."""
    _lookup(model_config)[1](model_config, tuple(input_shape), num_classes)


def create_model(model_config: Any, *, input_shape: tuple[int, int, int], num_classes: int,
                 rngs: nnx.Rngs, compute: Compute | None = None) -> nnx.Module:
    """Build the model named by `model_config.name` (validating the config first), computing as
    `compute` says (training passes what `execution.plan` chose for the backend; by default the
    config's own `conv_impl`, 'auto' meaning XLA's convolution, in float32 with JAX's gradients)."""
    validate_model_config(model_config, input_shape, num_classes)
    if compute is None:
        conv_impl = model_config.get("conv_impl", "auto")
        compute = Compute("xla" if conv_impl == "auto" else conv_impl)
    return _lookup(model_config)[0](model_config, input_shape=tuple(input_shape), num_classes=num_classes,
                                    rngs=rngs, compute=compute)
