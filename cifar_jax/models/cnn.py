"""The configurable CNN: every variant the studies tried on the tutorial LeNet and the small CNNs.

    [conv -> BatchNorm2d? -> activation -> dropout? -> pool] * len(conv_features)
    -> flatten
    -> [linear -> BatchNorm1d? -> activation -> dropout?] * len(dense_features)
    -> dropout? (placement 'head') -> linear (num_classes logits)

The tutorial LeNet is the default config: conv 6@5x5 -> maxpool 2 -> conv 16@5x5 -> maxpool 2
-> 120 -> 84 -> 10, VALID padding: 62,006 parameters, like PyTorch's.

Pooling: window = stride = pool_size, floor mode (PyTorch's nn.MaxPool2d(p) / AvgPool2d(p) /
LPPool2d(2, p)). Padding 'SAME' follows XLA (for stride 1 and odd kernels it equals PyTorch's
padding=k//2).

Dropout placement: 'conv' after every conv stage's activation (before pooling), 'dense' after
every hidden dense layer, 'all' both, 'head' once before the output layer, 'none' nowhere.
`dropout_kind` 'channel' makes the conv stages' dropout PyTorch's Dropout2d (whole feature maps);
dense layers always drop elements.

`model.name='mlp'` is this CNN without conv stages (the fifth study's 3072-512-10 MLP and its
variants): `mlp_config` empties `conv_features`.

Flatten order is NHWC (PyTorch flattens NCHW). Parameter counts and the function class are the
same; only loading PyTorch weights into the first dense layer would need a permutation, which
this project does not do.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from cifar_jax.errors import ConfigError
from cifar_jax.models import common, layers
from cifar_jax.models.conv import Conv2d, conv_output_size
from cifar_jax.models.stage_form import stage_form
from cifar_jax.models.common import field


def conv_plan(cfg: Any, input_shape) -> tuple[list[dict], int]:
    """Validate the conv part and return per-stage settings plus the flattened feature count."""
    h, w, c = (int(d) for d in input_shape)
    features = common.positive_ints("conv_features", field(cfg, "conv_features", ()))
    n = len(features)
    kernels = common.per_stage("kernel_size", field(cfg, "kernel_size", 3), n, "conv_features") if n else ()
    strides = common.per_stage("strides", field(cfg, "strides", 1), n, "conv_features") if n else ()
    padding = common.choice("padding", field(cfg, "padding", "VALID"), layers.PADDINGS)
    pool = common.choice("pool", field(cfg, "pool", "max"), layers.POOLS)
    pool_size = common.positive_int("pool_size", field(cfg, "pool_size", 2))
    stages = []
    for i, (f, k, s) in enumerate(zip(features, kernels, strides)):
        if padding == "VALID" and (k > h or k > w):
            raise ConfigError(
                f"model.kernel_size[{i}]={k} is larger than the {h}x{w} feature map reaching conv "
                f"stage {i + 1}; use a smaller kernel, padding='SAME' or fewer pooling stages")
        h = conv_output_size(h, k, s, padding)
        w = conv_output_size(w, k, s, padding)
        if pool != "none":
            if h // pool_size == 0 or w // pool_size == 0:
                raise ConfigError(
                    f"model.pool_size={pool_size} shrinks the {h}x{w} output of conv stage {i + 1} "
                    f"to nothing; use a smaller pool_size, pool='none', padding='SAME' or fewer stages")
            h, w = h // pool_size, w // pool_size
        stages.append(dict(in_features=c, out_features=f, kernel_size=k, strides=s))
        c = f
    return stages, h * w * c


def mlp_config(cfg: Any) -> Any:
    """An MLP config as this CNN's: the same dense head, no conv stages."""
    cfg = cfg.copy_and_resolve_references()
    cfg.conv_features = ()
    return cfg


def validate(cfg: Any, input_shape, num_classes: int) -> None:
    common.common_checks(cfg, input_shape, num_classes)
    conv_plan(cfg, input_shape)
    dense = common.positive_ints("dense_features", field(cfg, "dense_features", ()))
    placement = field(cfg, "dropout_placement", "none")
    if field(cfg, "dropout_rate", 0.0) > 0:
        if placement == "conv" and not common.as_tuple(field(cfg, "conv_features", ())):
            raise ConfigError("model.dropout_placement='conv' but model.conv_features is empty; "
                              "use 'dense', 'head' or 'none'")
        if placement == "dense" and not dense:
            raise ConfigError("model.dropout_placement='dense' but model.dense_features is empty "
                              "(no hidden dense layers); use 'conv', 'head' or 'none'")


class ConvStage(nnx.Module):
    """conv -> optional BatchNorm2d -> activation -> optional dropout -> pool, in the form
    (`stage_form`) the execution plan's `compute` and the shapes allow."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, strides: int, *,
                 padding: str, batch_norm: bool, bn_momentum: float, activation: str,
                 dropout: layers.Dropout | None, pool: str, pool_size: int, init: str,
                 compute: layers.Compute, rngs: nnx.Rngs):
        self.conv = Conv2d(in_features, out_features, kernel_size, strides=strides, padding=padding,
                           init=init, impl=compute.conv_impl, dtype=compute.dtype, rngs=rngs)
        self.bn = layers.BatchNorm(out_features, momentum=bn_momentum) if batch_norm else None
        self.activation = activation
        self.dropout = dropout
        self.pool = pool
        self.pool_size = pool_size
        self.compute = compute

    def __call__(self, x: jax.Array) -> jax.Array:
        form = stage_form(self.conv, x.shape, batch_norm=self.bn is not None, activation=self.activation,
                          dropout=self.dropout is not None, pool=self.pool, pool_size=self.pool_size,
                          compute=self.compute)
        x = self.conv(x, window=form.window)
        if self.bn is not None:
            x = self.bn(x)
        x = layers.activate(self, self.activation, x, sow_dead=not form.dead_after_pool)
        if self.dropout is not None:
            x = self.dropout(x)
        x = form.pool(x, self.pool, self.pool_size)
        if form.dead_after_pool:
            layers.sow_dead_channels(self, x)
        return x


class CNN(nnx.Module):
    def __init__(self, cfg: Any, *, input_shape, num_classes: int, rngs: nnx.Rngs,
                 compute: layers.Compute = layers.Compute()):
        validate(cfg, input_shape, num_classes)
        stages, flat = conv_plan(cfg, input_shape)
        rate = float(field(cfg, "dropout_rate", 0.0))
        placement = field(cfg, "dropout_placement", "none")
        activation = field(cfg, "activation", "relu")
        momentum = float(field(cfg, "bn_momentum", 0.9))
        self.stages = nnx.List([
            ConvStage(**s, padding=field(cfg, "padding", "VALID"),
                      batch_norm=bool(field(cfg, "conv_batch_norm", False)), bn_momentum=momentum,
                      activation=activation,
                      dropout=layers.maybe_dropout(rate, placement in ("conv", "all"), rngs,
                                                  common.conv_dropout_kind(cfg)),
                      pool=field(cfg, "pool", "max"), pool_size=int(field(cfg, "pool_size", 2)),
                      init=field(cfg, "init", "torch_default"),
                      compute=compute, rngs=rngs)
            for s in stages
        ])
        layers.build_dense_head(self, flat, num_classes, common.head_spec(cfg, field(cfg, "dense_features", ())),
                                compute, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for stage in self.stages:
            x = stage(x)
        return layers.apply_dense_head(self, x.reshape(x.shape[0], -1))
