"""The CPU form of a convolution: image patches (im2col) x one matmul, with space-to-depth blocks
for stride-1 convolutions, and the cost model that picks the block size."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from cifar_jax.models.matmul import kernel_matmul


# Costs relative to one multiply-add, for choosing the space-to-depth factor on a CPU: a matmul
# runs at ~40 GFLOP/s on a 2-core AVX2 machine (0.05 ns per MAC) while writing the patches (a
# concatenate) and reading them back for the forward and the weight gradient costs ~1.5-2 ns
# per element; building the block kernel and folding its gradient back are transposes of small
# arrays at ~4 ns per element each way, paid once per step whatever the batch size.
PATCH_ELEMENT_COST_MACS = 35
BLOCK_KERNEL_ELEMENT_COST_MACS = 300


def space_to_depth_factor(kernel_hw: Sequence[int], in_channels: int, out_channels: int,
                          out_hw: Sequence[int], strides: Sequence[int], batch: int = 128) -> int:
    """The block size f (1 = plain im2col) for `conv_patches`: a stride-1 convolution on an image
    rearranged into f x f blocks (space to depth) becomes a ceil((f+k-1)/f)-tap convolution over
    f*f*C channels with f*f*O outputs. Patches shrink ~f*f/ceil((f+k-1)/f)^2-fold and get longer
    contiguous rows; the price is multiply-adds with structural zeros in the block kernel and
    building that kernel each step. The factor minimises the estimated cost of one step on a
    batch of `batch` images (the constants above)."""
    if tuple(strides) != (1, 1):
        return 1
    (kh, kw), (oh, ow) = kernel_hw, out_hw

    def cost(f: int) -> float:
        kbh, kbw = (f + kh - 2) // f + 1, (f + kw - 2) // f + 1
        blocks = -(-oh // f) * -(-ow // f)
        k_dim = kbh * kbw * f * f * in_channels
        per_image = blocks * k_dim * (f * f * out_channels) + PATCH_ELEMENT_COST_MACS * blocks * k_dim
        return batch * per_image + BLOCK_KERNEL_ELEMENT_COST_MACS * k_dim * f * f * out_channels

    candidates = [f for f in (1, 2, 3, 4) if f <= min(oh, ow)]
    return min(candidates, key=cost)


def _block_kernel_rows(kernel: jax.Array, f: int, axis: int) -> jax.Array:
    """Along `axis` (0: rows, 1: cols) of an HWIO kernel, tap t of size k becomes (block b, offset
    u within the input block, output phase a) with value kernel[f*b + u - a] (zero outside): the
    result has the axis replaced by (kb, f_u, f_a)."""
    k = kernel.shape[axis]
    kb = (f + k - 2) // f + 1
    pad = [(0, 0)] * kernel.ndim
    pad[axis] = (f - 1, kb * f - k)  # index f*b + u - a + (f - 1) into the padded axis
    padded = jnp.pad(kernel, pad)
    phases = []
    for a in range(f):
        start = f - 1 - a
        taps = lax.slice_in_dim(padded, start, start + kb * f, axis=axis)
        shape = list(taps.shape)
        shape[axis:axis + 1] = [kb, f]
        phases.append(taps.reshape(shape))
    return jnp.stack(phases, axis=axis + 2)


def _im2col(x: jax.Array, kh: int, kw: int, sh: int, sw: int) -> jax.Array:
    """(N, H, W, C) -> (N, OH, OW, kh*kw*C), patch order (i, j, c) like a reshaped HWIO kernel.
    (A gather with static indices builds the same array; on XLA:CPU it cost more CPU time per
    training step than this concatenate, with its backward as pads + adds via a custom VJP.)"""
    n, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def conv_patches(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                 pads: Sequence[tuple[int, int]], s2d_factor: int | None = None) -> jax.Array:
    """A convolution (NHWC, HWIO, explicit padding) as image patches x one matmul, the same
    numbers as `lax.conv_general_dilated` up to float reassociation.

    Stride-1 convolutions first go to space-to-depth blocks of `s2d_factor` (None: chosen by
    `space_to_depth_factor`): LeNet's first layer (3 channels, 5x5) then needs 3x fewer patch
    elements and runs ~4x faster on a CPU, where building patches, not multiplying, is the cost.
    Everything here is slices, reshapes, transposes and one dot, so `vmap` over per-seed kernels
    gives a batched matmul, and the gradients are the same kind of ops.
    """
    (kh, kw, c, o), (sh, sw) = kernel.shape, tuple(strides)
    x = pad_spatial(x, pads)
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    f = s2d_factor or space_to_depth_factor((kh, kw), c, o, (oh, ow), (sh, sw), batch=n)
    if f == 1:
        return kernel_matmul(_im2col(x, kh, kw, sh, sw), kernel.reshape(kh * kw * c, o))
    if (sh, sw) != (1, 1):
        raise ValueError(f"space-to-depth needs stride 1, got strides {(sh, sw)}")
    y = blocked_conv(x, kernel, f)  # (n, obh, obw, f*f*o)
    n, obh, obw, _ = y.shape
    y = y.reshape(n, obh, obw, f, f, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, obh * f, obw * f, o)
    return y[:, :oh, :ow] if (obh * f, obw * f) != (oh, ow) else y


def pad_spatial(x: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """NHWC `x` with explicit (lo, hi) padding on H and W (`conv.explicit_padding`)."""
    if any(p for pair in pads for p in pair):
        x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    return x


def blocked_conv(x: jax.Array, kernel: jax.Array, f: int) -> jax.Array:
    """A stride-1 VALID convolution on f x f space-to-depth blocks: (n, obh, obw, f*f*o), output
    pixel (f*bi + a, f*bj + b) of channel o at [bi, bj, (a, b, o)] (`conv_patches`)."""
    (kh, kw, c, o), (n, h, w, _) = kernel.shape, x.shape
    oh, ow = h - kh + 1, w - kw + 1
    kbh, kbw = (f + kh - 2) // f + 1, (f + kw - 2) // f + 1
    obh, obw = -(-oh // f), -(-ow // f)  # output blocks
    hb, wb = obh + kbh - 1, obw + kbw - 1  # input blocks (>= h/f, w/f: pad, never crop)
    x = jnp.pad(x, ((0, 0), (0, hb * f - h), (0, wb * f - w), (0, 0)))
    x = x.reshape(n, hb, f, wb, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hb, wb, f * f * c)
    # block kernel [bi, bj, (u, v, c), (a, b, o)] = kernel[f*bi + u - a, f*bj + v - b, c, o]
    blocks = _block_kernel_rows(_block_kernel_rows(kernel, f, 0), f, 3)  # (kbh, f, f, kbw, f, f, c, o)
    blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5, 7).reshape(kbh * kbw * f * f * c, f * f * o)
    return kernel_matmul(_im2col(x, kbh, kbw, 1, 1), blocks)


