"""2-D convolution with numerically equivalent forms behind one switch (`Compute.conv_impl`):
XLA's convolution; image patches x one matmul (`patches`), which XLA:CPU runs much faster under
`jax.vmap` over per-seed weights; and `winograd`, patches except for the stride-1 3x3 and 5x5
layers with many channels, which take Winograd's F(4x4, kxk) (`models/winograd.py`), about twice
as fast again on XLA:CPU (measured: docs/performance.md)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx
from jax import lax

from cifar_jax.models import patches, winograd
from cifar_jax.models.layers import PADDINGS, Compute, add_bias, cast, init_bias, init_kernel


def explicit_padding(padding, in_hw: Sequence[int], kernel_hw: Sequence[int],
                     strides: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """'VALID' | 'SAME' (XLA's rule) | int p (PyTorch's symmetric padding=p) | ((lo, hi), (lo, hi))."""
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        if padding.upper() == "SAME":
            pads = []
            for n, k, s in zip(in_hw, kernel_hw, strides):
                out = -(-n // s)
                total = max((out - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)  # type: ignore[return-value]
        raise ValueError(f"unknown padding {padding!r}; use one of {PADDINGS}")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    (a, b), (c, d) = padding
    return ((int(a), int(b)), (int(c), int(d)))


def conv_output_size(n: int, k: int, s: int, padding, axis: int = 0) -> int:
    """Spatial output size of a convolution along one axis (same rule as `explicit_padding`)."""
    lo, hi = explicit_padding(padding, (n, n), (k, k), (s, s))[axis]
    return (n + lo + hi - k) // s + 1


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv2d(nnx.Module):
    """2-D convolution on NHWC inputs with an HWIO kernel (like `nnx.Conv`).

    impl='xla' calls `lax.conv_general_dilated`; impl='patches' pads, takes kh*kw strided static
    slices, concatenates them on the channel axis (order (i, j, c), matching the HWIO kernel
    reshaped to (kh*kw*C, O)) and does one matmul; impl='winograd' is 'patches' except where
    `winograd.applies` to the layer's shape. All give the same numbers up to float rounding.
    `dtype` is the arithmetic dtype: the float32 kernel is cast per call, so parameters stay float32.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size, *, strides=1,
                 padding="VALID", use_bias: bool = True, init: str = "torch_default",
                 impl: str = "xla", dtype: str = "float32", rngs: nnx.Rngs):
        kh, kw = _pair(kernel_size)
        self.kernel_size = (kh, kw)
        self.strides = _pair(strides)
        self.padding = padding if isinstance(padding, (str, int)) else tuple(map(tuple, padding))
        self.in_features = in_features
        self.out_features = out_features
        self.impl = Compute(impl, dtype).conv_impl
        self.dtype = dtype
        fan_in, fan_out = kh * kw * in_features, kh * kw * out_features
        self.kernel = nnx.Param(init_kernel(rngs.params(), (kh, kw, in_features, out_features),
                                            init, fan_in, fan_out))
        self.bias = (nnx.Param(init_bias(rngs.params(), (out_features,), init, fan_in))
                     if use_bias else None)

    def output_hw(self, in_hw: Sequence[int]) -> tuple[int, int]:
        """The output's spatial size for an input of spatial size `in_hw`."""
        return tuple(conv_output_size(n, k, s, self.padding, axis)  # type: ignore[return-value]
                     for axis, (n, k, s) in enumerate(zip(in_hw, self.kernel_size, self.strides)))

    def groups_windows(self, in_shape: Sequence[int], size: int) -> bool:
        """Whether `__call__(x, window=size)` on NHWC inputs of `in_shape` gives its output grouped
        in size x size pooling windows for free: the patches form's space-to-depth blocks are
        those windows (stride 1, the block size `patches.conv_patches` would choose, whole blocks)."""
        oh, ow = self.output_hw(in_shape[-3:-1])
        if self.impl == "xla" or self.strides != (1, 1) or size < 2 or self.uses_winograd((oh, ow)):
            return False
        return not (oh % size or ow % size) and patches.space_to_depth_factor(
            self.kernel_size, self.in_features, self.out_features, (oh, ow), (1, 1), batch=in_shape[0]) == size

    def uses_winograd(self, out_hw: Sequence[int]) -> bool:
        """Whether this layer takes the Winograd form for an output of spatial size `out_hw`."""
        return self.impl == "winograd" and winograd.applies(self.kernel_size, self.strides, self.in_features,
                                                            out_hw, self.dtype)

    def __call__(self, x: jax.Array, window: int = 1) -> jax.Array:
        """The convolution, (n, oh, ow, O); with `window` > 1 (only where `groups_windows`) grouped
        in pooling windows, (n, oh/window, ow/window, window**2, O): a pool then reduces one axis,
        with no transposes forward or backward."""
        pads = explicit_padding(self.padding, x.shape[-3:-1], self.kernel_size, self.strides)
        x, kernel = cast(self.dtype, x, self.kernel[...])
        if window > 1:
            y = patches.blocked_conv(patches.pad_spatial(x, pads), kernel, window)
            return add_bias(y.reshape(*y.shape[:3], window * window, self.out_features), self.bias)
        if self.impl == "xla":
            y = lax.conv_general_dilated(x, kernel, self.strides, pads,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        elif self.uses_winograd(self.output_hw(x.shape[-3:-1])):
            y = winograd.conv_winograd(x, kernel, pads)
        else:
            y = patches.conv_patches(x, kernel, self.strides, pads)
        return add_bias(y, self.bias)
