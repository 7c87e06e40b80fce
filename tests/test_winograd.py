"""Winograd F(4x4, kxk) convolutions (`cifar_jax/models/winograd.py`): the transforms compute a
correlation, the layer agrees with XLA's convolution forward and backward (also vmapped over
per-run kernels), and `Conv2d` takes the form only where `winograd.applies`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cifar_jax.models import conv, winograd


@pytest.mark.parametrize("kernel", [3, 5])
def test_transforms_compute_a_correlation(kernel):
    a_t, g, b_t = (np.array(m) for m in winograd.transforms(winograd.TILE, kernel))
    rng = np.random.RandomState(kernel)
    for _ in range(5):
        d, taps = rng.randn(winograd.TILE + kernel - 1), rng.randn(kernel)
        expected = [np.dot(d[i:i + kernel], taps) for i in range(winograd.TILE)]
        np.testing.assert_allclose(a_t @ ((g @ taps) * (b_t @ d)), expected, rtol=1e-10, atol=1e-10)


def xla_conv(x, kernel, pads):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


CASES = [  # kernel (kh, kw), padding: sizes that are not multiples of the tile, asymmetric pads
    ((3, 3), ((1, 1), (1, 1))),
    ((5, 5), ((0, 0), (0, 0))),
    ((3, 5), ((1, 2), (0, 3))),
]


@pytest.mark.parametrize("kernel_hw,pads", CASES)
def test_conv_winograd_matches_xla_forward_and_backward_under_vmap(kernel_hw, pads):
    """Two runs' kernels vmapped, as every program runs them: outputs, input gradients and kernel
    gradients agree with XLA's convolution to float32 rounding (relative to each array's scale)."""
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, 3, 13, 11, 16), jnp.float32)
    kernels = jnp.asarray(rng.randn(2, *kernel_hw, 16, 8) / np.sqrt(16 * np.prod(kernel_hw)), jnp.float32)

    def loss(form):
        return lambda x, k: jnp.sum(jnp.sin(form(x, k, pads)))

    def values_and_grads(form):
        y = jax.vmap(lambda x, k: form(x, k, pads))(x, kernels)
        return (y, *jax.vmap(jax.grad(loss(form), argnums=(0, 1)))(x, kernels))

    got = jax.jit(lambda: values_and_grads(winograd.conv_winograd))()
    want = jax.jit(lambda: values_and_grads(xla_conv))()
    for name, actual, expected in zip(("output", "d input", "d kernel"), got, want):
        assert actual.shape == expected.shape, name
        scale = float(jnp.abs(expected).max())
        np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-5 * scale, err_msg=name)
    assert not np.allclose(got[0][0], got[0][1])  # the runs' kernels differ, so must their outputs


def test_conv2d_takes_winograd_only_where_it_applies():
    """Many input channels, stride 1, 3x3 or 5x5, an output of 8x8 or more, float32: Winograd;
    anything else keeps patches (an RGB first layer, a strided or 7x7 layer, a tiny map)."""
    def layer(c_in, k=3, strides=1, impl="winograd", dtype="float32"):
        return nnx.eval_shape(lambda: conv.Conv2d(c_in, 8, k, strides=strides, padding="SAME", impl=impl,
                                                  dtype=dtype, rngs=nnx.Rngs(0)))
    assert layer(16).uses_winograd((8, 8)) and layer(32, k=5).uses_winograd((16, 16))
    assert not layer(3).uses_winograd((32, 32))  # few input channels
    assert not layer(16).uses_winograd((7, 7))  # a tile mostly padding
    assert not layer(16, strides=2).uses_winograd((8, 8))
    assert not layer(16, k=7).uses_winograd((16, 16))
    assert not layer(16, impl="patches").uses_winograd((16, 16))
    assert not layer(16, dtype="bfloat16").uses_winograd((16, 16))


def test_conv2d_forms_agree_where_winograd_applies():
    """The layer as a model builds it: 'winograd' (taken here, 16 -> 8 channels on 10x10) equals
    'xla' and 'patches' with the same parameters, bias included."""
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(4, 10, 10, 16), jnp.float32)
    outputs = {}
    for impl in ("xla", "patches", "winograd"):
        layer = conv.Conv2d(16, 8, 3, padding="SAME", impl=impl, rngs=nnx.Rngs(0))
        outputs[impl] = nnx.jit(lambda layer, x: layer(x))(layer, x)
    assert conv.Conv2d(16, 8, 3, padding="SAME", impl="winograd", rngs=nnx.Rngs(0)).uses_winograd((10, 10))
    scale = float(jnp.abs(outputs["xla"]).max())
    for impl in ("patches", "winograd"):
        np.testing.assert_allclose(outputs[impl], outputs["xla"], rtol=0, atol=2e-5 * scale, err_msg=impl)
