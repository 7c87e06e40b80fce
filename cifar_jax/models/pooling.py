"""Pooling: non-overlapping windows by reshaping, a max whose backward may be one pass (on CPU,
by the execution plan's choice), and global average pooling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cifar_jax.models.layers import POOLS


def pool2d(x: jax.Array, kind: str, size: int, one_pass_max: bool = False) -> jax.Array:
    """Non-overlapping pooling, window = stride = size, floor mode (PyTorch's defaults).

    max / avg / lp (power 2: sqrt of the window's sum of squares, PyTorch's LPPool2d(2, size)
    with a zero gradient where the window is all zeros) / none. Implemented by reshaping, which
    is cheaper than reduce_window (and its select-and-scatter gradient) on CPU. `one_pass_max`:
    see `window_max`.
    """
    if kind == "none" or size == 1:
        return x
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    x = x[:, : oh * size, : ow * size, :].reshape(n, oh, size, ow, size, c)
    if kind == "max":
        return window_max(x, (2, 4), one_pass_max)
    if kind == "avg":
        return jnp.mean(x, axis=(2, 4))
    if kind == "lp":
        s = jnp.sum(jnp.square(x), axis=(2, 4))
        positive = s > 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)
    raise ValueError(f"unknown pool {kind!r}; use one of {POOLS}")


def pool_window_axis(x: jax.Array, kind: str, one_pass_max: bool = False) -> jax.Array:
    """`pool2d` of a convolution's output grouped in windows, (n, oh, ow, window, c)
    (`conv.Conv2d.groups_windows`): max or avg over the window axis."""
    if kind == "max":
        return window_max(x, (3,), one_pass_max)
    if kind == "avg":
        return jnp.mean(x, axis=3)
    raise ValueError(f"pooling over a window axis supports max and avg, not {kind!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Max over the pooling window's `axes` with JAX's gradient (ties share it evenly: on an
    image's constant background every position of a window ties), whose backward is one pass
    that recomputes the maxima's positions from `x` instead of the generic rule's indicator array
    written in the forward and read back: LeNet's step ~20% faster on CPU.

    Only for an `x` that XLA recomputes bit for bit in every fusion (`window_max`): otherwise the
    forward's maximum may match no position of the backward's `x`. The count of maxima is then
    0; it is clamped to 1, so such a window passes no gradient instead of an inf or NaN one."""
    return jnp.max(x, axis=axes)


def _window_max_fwd(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = jnp.max(x, axis=axes)
    return y, (x, y)


def _window_max_bwd(axes: tuple[int, ...], residuals: tuple[jax.Array, jax.Array], g: jax.Array
                    ) -> tuple[jax.Array]:
    x, y = residuals
    at_max = x == jnp.expand_dims(y, axes)
    share = g / jnp.maximum(jnp.sum(at_max, axis=axes), 1).astype(g.dtype)
    return (jnp.where(at_max, jnp.expand_dims(share, axes), jnp.zeros((), g.dtype)),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def window_max(x: jax.Array, axes: tuple[int, ...], one_pass: bool) -> jax.Array:
    """Max over `axes`; with the one-pass backward (`_window_max`) when `one_pass`, which the
    caller may only ask for where XLA recomputes `x` bit for bit in every fusion. Observed on
    XLA:CPU for an exactly rounded float32 activation of a convolution plus bias
    (`layers.EXACT_ACTIVATIONS`), dropout included; it fails after batch norm, whose affine map
    XLA contracts to fused multiply-adds in some fusions and not in others (`stage_form`)."""
    return _window_max(x, axes) if one_pass else jnp.max(x, axis=axes)


def global_avg_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(-3, -2))


