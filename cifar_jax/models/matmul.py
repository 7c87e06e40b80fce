"""`x @ kernel` for a layer's weights, with the weight gradient written out for large layers so
that XLA:CPU's consumers of that gradient read it in order.

JAX's transpose rule for a dot under `vmap` (every program vmaps its runs, even one) gives the
weight gradient as the transpose of another dot. XLA:CPU keeps that transpose lazy and fuses it
into each consumer, so Adam's two moment updates each read the whole gradient strided: for 004's
MLP (3072 x 512) 2.3 ms a moment, half its step. Written here as one `dot_general` that contracts
the batch axes, the gradient comes out (in, out) like the kernel. Which operand is transposed for
that dot is chosen by size (`_backward`). JAX's rule also transposes the output gradient dy in
memory, fused into whatever made it: after batch norm's backward that fusion writes strided (004's
first convolution, a 6.5-million-element dy: 39 of 230 ms a step), so a large output counts too.
Small layers (all of LeNet's) keep JAX's rule: their arrays stay in the caches, and the
written-out form measured ~8% slower for LeNet at batch 4.
Same numbers within float summation order (`docs/performance.md`, "Weight gradients")."""

from __future__ import annotations

import jax
from jax import lax

# A kernel of at least this many elements (256 KiB in float32, beyond a core's L2 share), or an
# output of at least this many (4 MiB: 004's first convolution, 100 x 32 x 32 x 64), gets the
# written-out weight gradient.
LARGE_KERNEL_ELEMENTS = 1 << 16
LARGE_OUTPUT_ELEMENTS = 1 << 20


def kernel_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (..., in) @ kernel (in, out) -> (..., out)."""
    output_elements = x.size // x.shape[-1] * kernel.shape[1]
    if kernel.size < LARGE_KERNEL_ELEMENTS and output_elements < LARGE_OUTPUT_ELEMENTS:
        return _forward(x, kernel)
    return _written_out_matmul(x, kernel)


def _forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def _written_out_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _forward(x, kernel)


def _forward_with_residuals(x: jax.Array, kernel: jax.Array):
    return _forward(x, kernel), (x, kernel)


def _backward(residuals, dy: jax.Array):
    """dx = dy @ kernel.T; dkernel = x.T @ dy over all rows. XLA:CPU's matmul contracts its
    operands' last axis, so one operand is transposed in memory first: x (rows x in) when that is
    cheaper than transposing dy (rows x out) plus reading the (in x out) result strided twice
    (Adam's moments), else dy, with the small result transposed (001's 5x5 convolution: patches
    of 5,120 x 800 against a 800 x 128 kernel)."""
    x, kernel = residuals
    leading = tuple(range(x.ndim - 1))
    rows, (k, o) = x.size // x.shape[-1], kernel.shape
    dx = lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
    if rows * k <= rows * o + 2 * k * o:
        dkernel = lax.dot_general(x, dy, ((leading, leading), ((), ())))
    else:
        dkernel = lax.dot_general(dy, x, ((leading, leading), ((), ()))).T
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_written_out_matmul.defvjp(_forward_with_residuals, _backward)
