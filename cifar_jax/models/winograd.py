"""The CPU form of a stride-1 3x3 or 5x5 convolution with many input channels: Winograd's minimal
filtering F(4x4, kxk) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).

Each 4x4 block of outputs comes from an 8x8 (5x5 kernel) or 6x6 (3x3) tile of input: the tile and
the kernel are taken to a transform domain by small constant matrices, multiplied elementwise
there (over channels: one batched matmul per transform position), and brought back. 001's 5x5
layer then needs 4 multiply-adds an output where im2col needs 25, 3x3 layers 2.25 where it needs 9;
the input is expanded 4x (5x5) or 2.25x, not 25x or 9x. On XLA:CPU, where im2col's matmuls
already run near the cores' peak, that halves these layers' time (`docs/performance.md`,
"Winograd convolutions"). Layers with few input channels (an RGB or grey first layer) keep
patches: their time is in building tiles, not in multiplying (`applies`).

The tile transforms are linear maps written as sums of contiguous slices with constant
coefficients; each has a custom VJP that is the transpose written the same way, because JAX's own
transpose of strided slices is a pad per term that XLA:CPU materialises one by one (measured:
3-5x slower than the whole convolution). Float32 results agree with `lax.conv_general_dilated`
to ~1e-5 of the output's scale (tests/test_winograd.py): the transforms add rounding, not bias.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Outputs per tile side. F(4, k) measured fastest for k = 3 and 5 against F(2, k) and F(6, 3);
# larger tiles need interpolation points whose transforms amplify float32 rounding.
TILE = 4
# Finite interpolation points of the Toom-Cook construction, in the order tiles need them (one
# more point, infinity, is always added): small magnitudes keep the transform matrices' entries
# near 1.
POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)
KERNEL_SIZES = (3, 5)
# Below this many input channels the tile transforms cost more than the multiply-adds they save
# (measured: a 3->32 layer 2.3 ms with patches, 5.2 ms Winograd; 32->64 23 ms against 11 ms).
MIN_IN_CHANNELS = 16
# Below this output size a 4x4 tile is mostly padding (a 7x7 output: 64 computed for 49 used).
MIN_OUTPUT_SIZE = 8

Matrix = tuple[tuple[float, ...], ...]


def applies(kernel_hw: Sequence[int], strides: Sequence[int], in_channels: int, out_hw: Sequence[int],
            dtype: str) -> bool:
    """Whether a layer of this shape takes the Winograd form on a CPU (else patches)."""
    return (tuple(strides) == (1, 1) and all(k in KERNEL_SIZES for k in kernel_hw)
            and in_channels >= MIN_IN_CHANNELS and min(out_hw) >= MIN_OUTPUT_SIZE and dtype == "float32")


@functools.cache
def transforms(tile: int, kernel: int) -> tuple[Matrix, Matrix, Matrix]:
    """Toom-Cook matrices (A^T, G, B^T) of F(tile, kernel), with correlation(d, g) = A^T[(G g) *
    (B^T d)] for every input window d (tile + kernel - 1 values) and kernel g. A^T and G follow
    from the points; B^T solves the identity's linear equations (least squares, then checked to
    satisfy them exactly)."""
    size = tile + kernel - 1
    points = POINTS[:size - 1]
    a_t, g = np.zeros((tile, size)), np.zeros((size, kernel))
    for j, p in enumerate(points):
        a_t[:, j] = [p ** i for i in range(tile)]
        g[j] = [p ** k / np.prod([p - q for q in points if q != p]) for k in range(kernel)]
    a_t[tile - 1, size - 1] = g[size - 1, kernel - 1] = 1.0  # the point at infinity
    # sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k], for every output i, tap k, input l
    equations = np.zeros((tile, kernel, size, size, size))
    for i in range(tile):
        for k in range(kernel):
            for l in range(size):
                equations[i, k, l, :, l] = a_t[i] * g[:, k]
    equations = equations.reshape(-1, size * size)
    targets = np.array([float(l == i + k) for i in range(tile) for k in range(kernel) for l in range(size)])
    b_t = np.linalg.lstsq(equations, targets, rcond=None)[0]
    if np.abs(equations @ b_t - targets).max() > 1e-9:
        raise ArithmeticError(f"no Winograd input transform for F({tile}, {kernel}) from points {points}")
    return _frozen(a_t), _frozen(g), _frozen(b_t.reshape(size, size))


def _frozen(matrix: np.ndarray) -> Matrix:
    """A hashable matrix (custom VJPs take it as a static argument), with the solver's rounding
    around integers removed so that zeros and ones cost no multiply."""
    snapped = np.where(np.abs(matrix - np.round(matrix)) < 1e-12, np.round(matrix), matrix)
    return tuple(tuple(float(v) for v in row) for row in snapped)


def _combination(coefficients: Sequence[float], terms: Sequence[jax.Array]) -> jax.Array:
    """sum c * t over the non-zero coefficients (XLA fuses the whole sum into one loop)."""
    total = None
    for c, term in zip(coefficients, terms):
        if c == 0.0:
            continue
        scaled = term if c == 1.0 else -term if c == -1.0 else term * np.float32(c)
        total = scaled if total is None else total + scaled
    return total if total is not None else jnp.zeros_like(terms[0])


def _tiled_forward(x: jax.Array, matrix: Matrix, axis: int, tiles: int) -> jax.Array:
    """out[a, ..., t, ...] = sum_i matrix[a][i] * x[..., TILE * t + i, ...] for t < `tiles` along
    `axis`, a new leading axis a: every window of matrix's width, taken every TILE positions."""
    width = len(matrix[0])
    blocks = tiles + (width - 1) // TILE
    x = _resized(x, axis, blocks * TILE)
    x = x.reshape(x.shape[:axis] + (blocks, TILE) + x.shape[axis + 1:])
    taps = [lax.index_in_dim(lax.slice_in_dim(x, i // TILE, i // TILE + tiles, axis=axis), i % TILE, axis + 1,
                             keepdims=False) for i in range(width)]
    return jnp.stack([_combination(row, taps) for row in matrix])


def _tiled_transpose(d: jax.Array, matrix: Matrix, axis: int, length: int) -> jax.Array:
    """The transpose of `_tiled_forward`: x[..., TILE * t + i, ...] += sum_a matrix[a][i] * d[a, ..., t, ...],
    as TILE phases, each a sum of shifted (padded) slices of d, interleaved."""
    width, tiles = len(matrix[0]), d.shape[axis + 1]
    blocks = tiles + (width - 1) // TILE
    phases = []
    for phase in range(TILE):
        coefficients, terms = [], []
        for shift in range(-(-(width - phase) // TILE)):
            for a, row in enumerate(matrix):
                if row[TILE * shift + phase] != 0.0:
                    pads = [(0, 0)] * (d.ndim - 1)
                    pads[axis] = (shift, blocks - tiles - shift)
                    coefficients.append(row[TILE * shift + phase])
                    terms.append(jnp.pad(d[a], pads))
        phases.append(_combination(coefficients, terms) if terms else
                      jnp.zeros(d.shape[1:axis + 1] + (blocks,) + d.shape[axis + 2:], d.dtype))
    x = jnp.stack(phases, axis + 1)
    return _resized(x.reshape(x.shape[:axis] + (blocks * TILE,) + x.shape[axis + 2:]), axis, length)


def _resized(x: jax.Array, axis: int, length: int) -> jax.Array:
    """`x` cropped or zero-padded at the end of `axis` to `length`."""
    if x.shape[axis] >= length:
        return lax.slice_in_dim(x, 0, length, axis=axis)
    pads = [(0, 0)] * x.ndim
    pads[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def to_tiles(x: jax.Array, matrix: Matrix, axis: int, tiles: int) -> jax.Array:
    """`_tiled_forward`, differentiated by its written-out transpose."""
    return _tiled_forward(x, matrix, axis, tiles)


def _to_tiles_forward(x, matrix, axis, tiles):
    return _tiled_forward(x, matrix, axis, tiles), x.shape[axis]


def _to_tiles_backward(matrix, axis, tiles, length, d):
    return (from_tiles(d, matrix, axis, length),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def from_tiles(d: jax.Array, matrix: Matrix, axis: int, length: int) -> jax.Array:
    """`_tiled_transpose`, differentiated by `_tiled_forward`."""
    return _tiled_transpose(d, matrix, axis, length)


def _from_tiles_forward(d, matrix, axis, length):
    return _tiled_transpose(d, matrix, axis, length), d.shape[axis + 1]


def _from_tiles_backward(matrix, axis, length, tiles, y):
    return (to_tiles(y, matrix, axis, tiles),)


to_tiles.defvjp(_to_tiles_forward, _to_tiles_backward)
from_tiles.defvjp(_from_tiles_forward, _from_tiles_backward)


def conv_winograd(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """A stride-1 convolution (NHWC, HWIO, explicit padding) by F(4x4, kh x kw): the same numbers
    as `lax.conv_general_dilated` up to float rounding. Under `vmap` over per-run kernels the
    multiply is one batched matmul over (run, transform position)."""
    (kh, kw, c, o), n = kernel.shape, x.shape[0]
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    th, tw = -(-oh // TILE), -(-ow // TILE)
    (a_h, g_h, b_h), (a_w, g_w, b_w) = transforms(TILE, kh), transforms(TILE, kw)
    tiles = to_tiles(to_tiles(x, b_h, 1, th), b_w, 3, tw)  # (size_w, size_h, n, th, tw, c)
    sw, sh = tiles.shape[:2]
    kernel = jnp.einsum("ai,ijco,bj->baco", np.asarray(g_h, np.float32), kernel, np.asarray(g_w, np.float32))
    products = lax.dot_general(tiles.reshape(sw * sh, n * th * tw, c), kernel.reshape(sw * sh, c, o),
                               (((2,), (1,)), ((0,), (0,))))
    y = products.reshape(sw, sh, n, th, tw, o)
    y = from_tiles(y, tuple(zip(*a_w)), 3, tw * TILE)  # (size_h, n, th, tw * TILE, o)
    y = from_tiles(y, tuple(zip(*a_h)), 1, th * TILE)  # (n, th * TILE, tw * TILE, o)
    return y[:, :oh, :ow]
