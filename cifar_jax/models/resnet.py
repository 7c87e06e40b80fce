"""ResNet-18, CIFAR variant: 3x3 stem (stride 1, no max-pool), four stages of two BasicBlocks
(64, 128, 256, 512 channels; stride 2 and a 1x1 conv + BN shortcut entering stages 2-4), global
average pooling, linear classifier. Convs have no bias and PyTorch's symmetric padding=1, so
shapes and parameter counts equal torchvision's resnet18 with the stem replaced by
conv3x3(in_channels, 64) and `fc` sized to num_classes.

Init: the config's `init` scheme for the convs (torchvision itself uses kaiming_normal with
fan_out, which is not one of the schemes), BatchNorm scale 1 / bias 0, `dense_init` for `fc`.
Dropout: only placement 'head' (once before `fc`) exists; torchvision's ResNet has none.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from cifar_jax.errors import ConfigError
from cifar_jax.models import common, layers, pooling
from cifar_jax.models.conv import Conv2d
from cifar_jax.models.common import field

STAGES = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2
# configs/default.py's CNN fields this fixed architecture never reads (ReLU and batch norm throughout).
IGNORED = ("activation", "conv_features", "kernel_size", "strides", "padding", "pool", "pool_size",
           "conv_batch_norm", "dense_features", "dense_batch_norm")


def validate(cfg: Any, input_shape, num_classes: int) -> None:
    common.common_checks(cfg, input_shape, num_classes)
    common.check_ignored(cfg, "resnet18", IGNORED)
    placement = field(cfg, "dropout_placement", "none")
    if field(cfg, "dropout_rate", 0.0) > 0 and placement not in ("head", "none"):
        raise ConfigError(f"model.dropout_placement={placement!r} does not exist in "
                          f"model.name='resnet18'; use 'head' (before the classifier) or 'none'")


class BasicBlock(nnx.Module):
    def __init__(self, in_features: int, out_features: int, strides: int, *, bn_momentum: float,
                 init: str, compute: layers.Compute, rngs: nnx.Rngs):
        conv = dict(use_bias=False, init=init, impl=compute.conv_impl, dtype=compute.dtype, rngs=rngs)
        self.conv1 = Conv2d(in_features, out_features, 3, strides=strides, padding=1, **conv)
        self.bn1 = layers.BatchNorm(out_features, momentum=bn_momentum)
        self.conv2 = Conv2d(out_features, out_features, 3, padding=1, **conv)
        self.bn2 = layers.BatchNorm(out_features, momentum=bn_momentum)
        if strides != 1 or in_features != out_features:
            self.shortcut_conv = Conv2d(in_features, out_features, 1, strides=strides,
                                               padding=0, **conv)
            self.shortcut_bn = layers.BatchNorm(out_features, momentum=bn_momentum)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut_conv is not None:
            x = self.shortcut_bn(self.shortcut_conv(x))
        return jax.nn.relu(x + y)


class ResNet18(nnx.Module):
    def __init__(self, cfg: Any, *, input_shape, num_classes: int, rngs: nnx.Rngs,
                 compute: layers.Compute = layers.Compute()):
        validate(cfg, input_shape, num_classes)
        momentum = float(field(cfg, "bn_momentum", 0.9))
        init = field(cfg, "init", "torch_default")
        self.stem = Conv2d(int(input_shape[2]), STAGES[0], 3, padding=1, use_bias=False,
                                  init=init, impl=compute.conv_impl, dtype=compute.dtype, rngs=rngs)
        self.stem_bn = layers.BatchNorm(STAGES[0], momentum=momentum)
        self.blocks = nnx.List()
        c = STAGES[0]
        for i, f in enumerate(STAGES):
            for j in range(BLOCKS_PER_STAGE):
                strides = 2 if (i > 0 and j == 0) else 1
                self.blocks.append(BasicBlock(c, f, strides, bn_momentum=momentum, init=init,
                                              compute=compute, rngs=rngs))
                c = f
        layers.build_dense_head(self, c, num_classes, common.head_spec(cfg, ()), compute, rngs)  # `fc` is `out`

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_bn(self.stem(x)))
        for blk in self.blocks:
            x = blk(x)
        return layers.apply_dense_head(self, pooling.global_avg_pool(x))
