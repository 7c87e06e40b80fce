"""The MLP of the fifth study (3072-512-10 with batch norm, ReLU, dropout 0.5) and variants.

    flatten -> [linear -> BatchNorm1d? -> activation -> dropout?] * len(dense_features)
    -> dropout? (placement 'head') -> linear (num_classes logits)

Hidden widths come from `model.dense_features` (the same field the CNN's dense head uses);
batch norm from `model.dense_batch_norm`. Dropout placement 'dense' or 'all' puts dropout after
every hidden layer, 'head' once before the output layer.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from flax import nnx

from cifar_jax.errors import ConfigError
from cifar_jax.models import common, layers
from cifar_jax.models.common import field


def validate(cfg: Any, input_shape, num_classes: int) -> None:
    common.common_checks(cfg, input_shape, num_classes)
    dense = common.positive_ints("dense_features", field(cfg, "dense_features", ()))
    placement = field(cfg, "dropout_placement", "none")
    if field(cfg, "dropout_rate", 0.0) > 0:
        if placement == "conv":
            raise ConfigError("model.dropout_placement='conv' but model.name='mlp' has no conv "
                              "layers; use 'dense', 'head' or 'none'")
        if placement == "dense" and not dense:
            raise ConfigError("model.dropout_placement='dense' but model.dense_features is empty "
                              "(no hidden layers); use 'head' or 'none'")


class MLP(nnx.Module):
    def __init__(self, cfg: Any, *, input_shape, num_classes: int, rngs: nnx.Rngs,
                 compute: layers.Compute = layers.Compute()):
        validate(cfg, input_shape, num_classes)
        rate = float(field(cfg, "dropout_rate", 0.0))
        placement = field(cfg, "dropout_placement", "none")
        init = common.dense_init(cfg)  # init_conv_only: no convs, so torch_default everywhere
        width = math.prod(int(d) for d in input_shape)
        self.hidden = nnx.List()
        for f in common.as_tuple(field(cfg, "dense_features", ())):
            self.hidden.append(layers.DenseLayer(
                width, int(f), activation=field(cfg, "activation", "relu"),
                batch_norm=bool(field(cfg, "dense_batch_norm", False)),
                bn_momentum=float(field(cfg, "bn_momentum", 0.9)),
                dropout=layers.maybe_dropout(rate, placement in ("dense", "all"), rngs),
                init=init, dtype=compute.dtype, rngs=rngs))
            width = int(f)
        self.head_dropout = layers.maybe_dropout(rate, placement == "head", rngs)
        self.out = layers.Linear(width, num_classes, init=init, dtype=compute.dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = layer(x)
        if self.head_dropout is not None:
            x = self.head_dropout(x)
        return self.out(x)
