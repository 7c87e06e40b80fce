"""`models.matmul.kernel_matmul`: the written-out weight gradient of large layers equals JAX's own
(within float summation order) in both of its forms, with leading batch axes and under `vmap`
over runs, and small layers keep JAX's own rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close_reassociated
from cifar_jax.models import matmul


def _grads(product, x, kernel, dy):
    _, vjp = jax.vjp(product, x, kernel)
    return vjp(dy)


# (x shape, kernel shape): x transposed for the dot (few rows), and dy transposed (many rows,
# a narrow kernel), with 2-D and 4-D (patches-like) inputs.
SHAPES = [((8, 512), (512, 256), False), ((2, 4, 4, 512), (512, 256), False),
          ((2048, 512), (512, 128), True), ((8, 16, 16, 512), (512, 128), True)]


@pytest.mark.parametrize("x_shape,kernel_shape,result_transposed", SHAPES)
def test_large_kernel_gradients_equal_jax_rule(x_shape, kernel_shape, result_transposed):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], x_shape)
    kernel = jax.random.normal(keys[1], kernel_shape)
    dy = jax.random.normal(keys[2], (*x_shape[:-1], kernel_shape[1]))
    assert kernel.size >= matmul.LARGE_KERNEL_ELEMENTS
    assert_close_reassociated(matmul.kernel_matmul(x, kernel), jnp.dot(x, kernel))
    for ours, jaxs in zip(_grads(matmul.kernel_matmul, x, kernel, dy), _grads(jnp.dot, x, kernel, dy)):
        assert ours.shape == jaxs.shape
        assert_close_reassociated(ours, jaxs)
    backward = jax.make_jaxpr(lambda *a: _grads(matmul.kernel_matmul, *a))(x, kernel, dy)
    assert ("transpose" in str(backward)) == result_transposed


def test_large_kernel_gradients_under_vmap_over_runs():
    runs, keys = 3, jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], (runs, 64, 512))
    kernel = jax.random.normal(keys[1], (runs, 512, 256))
    dy = jax.random.normal(keys[2], (runs, 64, 256))
    ours = jax.jit(jax.vmap(lambda *a: _grads(matmul.kernel_matmul, *a)))(x, kernel, dy)
    jaxs = jax.vmap(lambda *a: _grads(jnp.dot, *a))(x, kernel, dy)
    for a, b in zip(ours, jaxs):
        assert_close_reassociated(a, b)


def test_small_layers_keep_jax_rule():
    x, kernel = jnp.ones((4, 400)), jnp.ones((400, 120))
    assert kernel.size < matmul.LARGE_KERNEL_ELEMENTS
    assert "custom_vjp" not in str(jax.make_jaxpr(matmul.kernel_matmul)(x, kernel))
    np.testing.assert_array_equal(matmul.kernel_matmul(x, kernel), jnp.dot(x, kernel))
    big_kernel = jax.ShapeDtypeStruct((512, 256), jnp.float32)
    assert "custom_vjp" in str(jax.make_jaxpr(matmul.kernel_matmul)(jnp.ones((4, 512)), big_kernel))
    # A small kernel with a large output (004's first convolution: patches of 27 -> 64 channels).
    patches = jax.ShapeDtypeStruct((100, 32, 32, 27), jnp.float32)
    small_kernel = jax.ShapeDtypeStruct((27, 64), jnp.float32)
    assert "custom_vjp" in str(jax.make_jaxpr(matmul.kernel_matmul)(patches, small_kernel))


def test_kept_kernel_is_not_counted_as_activations():
    """The custom VJP keeps the kernel for dx, as JAX's rule does: the execution plan's activation
    count (`residual_bytes`, which sizes run groups) is the same either way. 004's MLP with the
    kernel counted looked activation-bound and lost its all-runs vmap."""
    from cifar_jax.core.execution import residual_bytes

    x, kernel = jax.ShapeDtypeStruct((100, 3072), jnp.float32), jax.ShapeDtypeStruct((3072, 512), jnp.float32)
    kept = {name: residual_bytes(lambda w, x: jnp.tanh(product(x, w)).sum(), kernel, x)
            for name, product in (("jax", jnp.dot), ("ours", matmul.kernel_matmul))}
    assert kept["ours"] == kept["jax"] == (100 * 3072 + 2 * 100 * 512) * 4
