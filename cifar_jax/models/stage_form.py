"""How a conv stage (conv -> batch norm? -> activation -> dropout? -> pool) is computed: the forms
that change speed but not the numbers, decided in one place from the execution plan's `Compute`
and the stage's shapes, so that `cnn.ConvStage` reads like its docstring.

- window: with the patches convolution (the CPU form) and space-to-depth blocks of the pool's
  size, the conv's output comes grouped in pooling windows and the pool reduces one axis, with no
  transposes forward or backward. Batch norm and activations are per channel, so they do not
  care; dropout's random mask follows the layout, so not with dropout.
- one_pass_max: the max pool's one-pass backward (`pooling.window_max`), where the plan allows it
  (`Compute.pool_backward`, CPU only) and XLA recomputes the pool's input bit for bit: float32,
  no batch norm, an exactly rounded activation of a matmul plus bias (not a Winograd layer's
  output transform, a sum of products that fusions may contract differently, as batch norm's).
- dead_after_pool: a ReLU channel is dead on the whole map iff it is dead on the max-pooled map
  when the pool covers the map, so the dead-channel diagnostic reads a size**2 smaller tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

from cifar_jax.models import pooling
from cifar_jax.models.conv import Conv2d
from cifar_jax.models.layers import EXACT_ACTIVATIONS, Compute


@dataclasses.dataclass(frozen=True)
class StageForm:
    """The decisions above for one stage on one input shape."""

    window: int  # > 1: the conv's output comes grouped in pooling windows of this size; 1: plain
    one_pass_max: bool
    dead_after_pool: bool

    def pool(self, x: jax.Array, kind: str, size: int) -> jax.Array:
        """The stage's pool in this form."""
        if self.window > 1:
            return pooling.pool_window_axis(x, kind, self.one_pass_max)
        return pooling.pool2d(x, kind, size, self.one_pass_max)


def stage_form(conv: Conv2d, in_shape: Sequence[int], *, batch_norm: bool, activation: str, dropout: bool,
               pool: str, pool_size: int, compute: Compute) -> StageForm:
    """The form of a stage whose convolution `conv` sees NHWC inputs of `in_shape`."""
    windowed = not dropout and pool in ("max", "avg") and conv.groups_windows(in_shape, pool_size)
    oh, ow = conv.output_hw(in_shape[-3:-1])
    pool_covers_map = windowed or (oh % pool_size == 0 and ow % pool_size == 0)
    exact_input = (not batch_norm and activation in EXACT_ACTIVATIONS and compute.dtype == "float32"
                   and not conv.uses_winograd((oh, ow)))
    return StageForm(window=pool_size if windowed else 1,
                     one_pass_max=compute.pool_backward == "one_pass" and exact_input,
                     dead_after_pool=activation == "relu" and not dropout and pool == "max" and pool_covers_map)
