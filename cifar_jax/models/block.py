"""The adaptive block CNN of the fourth study.

A `Block` holds k parallel branches, each conv 3x3 (SAME) -> activation -> dropout -> max-pool
2x2; a gate computes k weights from the block input (global average pool -> dense(k) -> gate
nonlinearity: 'none' as the study describes, or softmax / sigmoid / relu; or 'uniform': fixed
weights 1/k and no gate parameters, the ablation that tells whether learning the weights
matters at all); the block output is
the gate-weighted sum of the branches, followed by BatchNorm2d. The model stacks
len(block_channels) blocks (study: channels [3, 64, 128, 256, 512], k=6, dropout 0.1), then
global average pooling and an MLP classifier (study: 256-128-64-num_classes with ReLU).

The k branch convolutions share their input, so they run as ONE convolution with k*C_out output
channels (kernel (3, 3, C_in, k*C_out); branch b owns output channels [b*C_out, (b+1)*C_out)).
This is exactly k independent convs: same parameter count, same per-branch init distribution
(fan_in = 9*C_in for each), same function; it is just faster.

Model-specific config fields (defaults = the study): block_channels, num_branches, gate,
classifier_features. Dropout placement: 'conv' in the branches (the study), 'dense' after every
classifier hidden layer, 'all' both, 'head' once before the output layer, 'none' nowhere.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cifar_jax.errors import ConfigError
from cifar_jax.models import common, layers, pooling
from cifar_jax.models.conv import Conv2d
from cifar_jax.models.common import field

GATES = ("none", "softmax", "sigmoid", "relu", "uniform")
# configs/default.py's CNN fields this model never reads (its blocks and classifier have their own).
IGNORED = ("conv_features", "kernel_size", "strides", "padding", "pool", "pool_size", "conv_batch_norm",
           "dense_features", "dense_batch_norm")
DEFAULTS = dict(block_channels=(64, 128, 256, 512), num_branches=6, gate="none",
                classifier_features=(256, 128, 64))
_GATE_FNS = {
    "none": lambda g: g,
    "softmax": lambda g: jax.nn.softmax(g, axis=-1),
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
}


def _get(cfg: Any, name: str):
    return field(cfg, name, DEFAULTS[name])


def validate(cfg: Any, input_shape, num_classes: int) -> None:
    common.common_checks(cfg, input_shape, num_classes)
    common.check_ignored(cfg, "block_cnn", IGNORED)
    channels = common.positive_ints("block_channels", _get(cfg, "block_channels"), allow_empty=False)
    common.positive_int("num_branches", _get(cfg, "num_branches"))
    common.choice("gate", _get(cfg, "gate"), GATES)
    hidden = common.positive_ints("classifier_features", _get(cfg, "classifier_features"))
    h, w = int(input_shape[0]), int(input_shape[1])
    for i in range(len(channels)):
        h, w = h // 2, w // 2
        if h == 0 or w == 0:
            raise ConfigError(
                f"model.block_channels has {len(channels)} blocks but the {input_shape[0]}x"
                f"{input_shape[1]} input shrinks to nothing in block {i + 1} (each block max-pools "
                f"2x2); use at most {i} blocks")
    placement = field(cfg, "dropout_placement", "none")
    if placement == "dense" and field(cfg, "dropout_rate", 0.0) > 0 and not hidden:
        raise ConfigError("model.dropout_placement='dense' but model.classifier_features is empty; "
                          "use 'conv', 'head' or 'none'")


class Block(nnx.Module):
    def __init__(self, in_features: int, out_features: int, num_branches: int, *, gate: str,
                 activation: str, dropout: layers.Dropout | None, bn_momentum: float, init: str,
                 dense_init: str, compute: layers.Compute, rngs: nnx.Rngs):
        self.num_branches = num_branches
        self.out_features = out_features
        self.conv = Conv2d(in_features, num_branches * out_features, 3, padding="SAME",
                                  init=init, impl=compute.conv_impl, dtype=compute.dtype, rngs=rngs)
        self.activation = activation
        self.dropout = dropout
        self.gate = (None if gate == "uniform" else
                     layers.Linear(in_features, num_branches, init=dense_init, dtype=compute.dtype, rngs=rngs))
        self.gate_fn = gate
        self.bn = layers.BatchNorm(out_features, momentum=bn_momentum)

    def gate_weights(self, x: jax.Array) -> jax.Array:
        """(N, k) branch weights for the block input x: the gate of the global average, or 1/k."""
        if self.gate is None:
            return jnp.full((x.shape[0], self.num_branches), 1.0 / self.num_branches, x.dtype)
        return _GATE_FNS[self.gate_fn](self.gate(pooling.global_avg_pool(x)))

    def __call__(self, x: jax.Array) -> jax.Array:
        g = self.gate_weights(x)
        y = layers.activate(self, self.activation, self.conv(x))
        if self.dropout is not None:
            y = self.dropout(y)
        y = pooling.pool2d(y, "max", 2)
        n, h, w, _ = y.shape
        y = y.reshape(n, h, w, self.num_branches, self.out_features)
        return self.bn(jnp.einsum("nhwkc,nk->nhwc", y, g))


class BlockCNN(nnx.Module):
    def __init__(self, cfg: Any, *, input_shape, num_classes: int, rngs: nnx.Rngs,
                 compute: layers.Compute = layers.Compute()):
        validate(cfg, input_shape, num_classes)
        rate = float(field(cfg, "dropout_rate", 0.0))
        placement = field(cfg, "dropout_placement", "none")
        activation = field(cfg, "activation", "relu")
        dense_init = common.dense_init(cfg)
        c = int(input_shape[2])
        self.blocks = nnx.List()
        for f in _get(cfg, "block_channels"):
            self.blocks.append(Block(
                c, int(f), int(_get(cfg, "num_branches")), gate=_get(cfg, "gate"),
                activation=activation,
                dropout=layers.maybe_dropout(rate, placement in ("conv", "all"), rngs, common.conv_dropout_kind(cfg)),
                bn_momentum=float(field(cfg, "bn_momentum", 0.9)),
                init=field(cfg, "init", "torch_default"), dense_init=dense_init,
                compute=compute, rngs=rngs))
            c = int(f)
        spec = common.head_spec(cfg, _get(cfg, "classifier_features"), batch_norm=False)
        layers.build_dense_head(self, c, num_classes, spec, compute, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for blk in self.blocks:
            x = blk(x)
        return layers.apply_dense_head(self, pooling.global_avg_pool(x))
