"""Building blocks shared by every model: PyTorch-faithful initialisation, Conv2d, Linear,
BatchNorm, Dropout with a traced rate, activations and pooling.

Why own layers instead of `nnx.Conv` / `nnx.Linear` / `nnx.BatchNorm` / `nnx.Dropout`:

- `Conv2d` has two numerically equivalent implementations behind one switch (`conv_impl`):
  XLA's convolution, and im2col ("patches": kh*kw static slices + one matmul). Under `jax.vmap`
  over per-seed weights XLA:CPU turns convolutions into slow grouped convolutions, while the
  patches form becomes batched matmuls (see DESIGN.md, "Known facts about the machines").
- Initialisation follows the PyTorch formulas exactly (fan_in = kh*kw*in_channels for convs).
- `BatchNorm` updates its running variance with the *unbiased* batch variance, as PyTorch does
  (Flax uses the biased one; the difference matters for BatchNorm1d at the tutorial's batch 4).
- `Dropout` keeps its rate in a `DropoutRate` variable, so the training core can make the rate a
  traced value per vmapped run by replacing those leaves of the state.

Train vs eval: `Dropout.deterministic` and `BatchNorm.use_running_average`, switched for a
whole model by NNX's `model.train()` / `model.eval()`. Modules are built in training mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

# ----------------------------------------------------------------------------- names

INIT_SCHEMES = (
    "torch_default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "lecun_normal",
)
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    # PyTorch's nn.GELU() is the exact (erf) form; jax.nn.gelu defaults to the tanh approximation.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "elu": jax.nn.elu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.01),  # PyTorch's default slope
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
}
POOLS = ("max", "avg", "lp", "none")
PADDINGS = ("VALID", "SAME")
CONV_IMPLS = ("auto", "xla", "patches")


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
    """'auto' -> 'patches' on CPU (vmapped XLA:CPU convolutions are slow), 'xla' elsewhere."""
    if impl == "auto":
        backend = backend or jax.default_backend()
        return "patches" if backend == "cpu" else "xla"
    if impl not in ("xla", "patches"):
        raise ValueError(f"unknown conv implementation {impl!r}; use one of {CONV_IMPLS}")
    return impl


# ----------------------------------------------------------------------------- init


def init_kernel(key: jax.Array, shape: Sequence[int], scheme: str, fan_in: int, fan_out: int,
                dtype=jnp.float32) -> jax.Array:
    """A weight tensor drawn as PyTorch's `torch.nn.init` would draw it for `scheme`.

    torch_default: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
    xavier_*: gain 1, fan_in + fan_out. kaiming_*: fan_in, ReLU gain sqrt(2), not truncated.
    lecun_normal: Flax's default, a truncated normal with std 1/sqrt(fan_in).
    """
    shape = tuple(shape)
    if scheme == "torch_default":
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    if scheme == "xavier_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    if scheme == "xavier_normal":
        return math.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)
    if scheme == "kaiming_uniform":
        bound = math.sqrt(6.0 / fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    if scheme == "kaiming_normal":
        return math.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, dtype)
    if scheme == "lecun_normal":
        # jax's truncated normal on [-2, 2] has std 0.87962566; rescale so the std is exact.
        std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
        return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
    raise ValueError(f"unknown init scheme {scheme!r}; use one of {INIT_SCHEMES}")


def init_bias(key: jax.Array, shape: Sequence[int], scheme: str, fan_in: int,
              dtype=jnp.float32) -> jax.Array:
    """PyTorch's default bias U(+-1/sqrt(fan_in)) for torch_default; zeros for the other schemes."""
    if scheme == "torch_default":
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)
    return jnp.zeros(tuple(shape), dtype)


# ----------------------------------------------------------------------------- layers


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
    reshaped to (kh*kw*C, O)) and does one matmul. Both give the same numbers; 'auto' picks per
    backend via `resolve_conv_impl`.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size, *, strides=1,
                 padding="VALID", use_bias: bool = True, init: str = "torch_default",
                 impl: str = "auto", rngs: nnx.Rngs):
        kh, kw = _pair(kernel_size)
        self.kernel_size = (kh, kw)
        self.strides = _pair(strides)
        self.padding = padding if isinstance(padding, (str, int)) else tuple(map(tuple, padding))
        self.in_features = in_features
        self.out_features = out_features
        self.impl = resolve_conv_impl(impl)
        fan_in, fan_out = kh * kw * in_features, kh * kw * out_features
        self.kernel = nnx.Param(init_kernel(rngs.params(), (kh, kw, in_features, out_features),
                                            init, fan_in, fan_out))
        self.bias = (nnx.Param(init_bias(rngs.params(), (out_features,), init, fan_in))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        sh, sw = self.strides
        pads = explicit_padding(self.padding, x.shape[-3:-1], self.kernel_size, self.strides)
        kernel = self.kernel[...]
        if self.impl == "xla":
            y = lax.conv_general_dilated(x, kernel, self.strides, pads,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            if any(p for pair in pads for p in pair):
                x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
            n, h, w, c = x.shape
            oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
            cols = [
                lax.slice(x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c),
                          (1, sh, sw, 1))
                for i in range(kh) for j in range(kw)
            ]
            patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
            y = jnp.dot(patches, kernel.reshape(kh * kw * c, self.out_features))
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class Linear(nnx.Module):
    """Dense layer, kernel (in, out), initialised like `Conv2d` (fan_in = in_features)."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 init: str = "torch_default", rngs: nnx.Rngs):
        self.in_features = in_features
        self.out_features = out_features
        self.kernel = nnx.Param(init_kernel(rngs.params(), (in_features, out_features), init,
                                            in_features, out_features))
        self.bias = (nnx.Param(init_bias(rngs.params(), (out_features,), init, in_features))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x, self.kernel[...])
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class BatchNorm(nnx.Module):
    """Batch norm over all axes but the last (BatchNorm1d on (N, C), BatchNorm2d on NHWC).

    PyTorch semantics: normalise with the biased batch variance, update the running variance
    with the unbiased one; running stats start at mean 0, var 1; scale 1, bias 0. `momentum` is
    Flax's convention (running = momentum * running + (1 - momentum) * batch): PyTorch's 0.1 is 0.9.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
                 use_running_average: bool = False):
        self.num_features = num_features
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            n = x.size // x.shape[-1]
            unbiased = lax.stop_gradient(var) * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1.0 - m) * lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1.0 - m) * unbiased
        y = (x - mean) * lax.rsqrt(var + self.epsilon)
        return y * self.scale[...] + self.bias[...]


class DropoutRate(nnx.Variable):
    """The dropout probability: state, not a parameter, so it can be a traced value per run."""


class Dropout(nnx.Module):
    """Inverted dropout whose rate lives in the state (`DropoutRate`) and may be traced.

    Keys come from the module's own fork of the 'dropout' stream of the `nnx.Rngs` given at
    construction, so each seed's dropout randomness is part of its model state (the RngKey /
    RngCount leaves): read them back after a step like the batch statistics.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False):
        self.rate = DropoutRate(jnp.asarray(rate, jnp.float32))
        self.deterministic = deterministic
        self.rngs = rngs.dropout.fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic:
            return x
        keep = 1.0 - self.rate[...].astype(x.dtype)
        mask = jax.random.bernoulli(self.rngs(), keep, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


# ----------------------------------------------------------------------------- pooling


def pool2d(x: jax.Array, kind: str, size: int) -> jax.Array:
    """Non-overlapping pooling, window = stride = size, floor mode (PyTorch's defaults).

    max / avg / lp (power 2: sqrt of the window's sum of squares, PyTorch's LPPool2d(2, size)
    with a zero gradient where the window is all zeros) / none. Implemented by reshaping, which
    is cheaper than reduce_window (and its select-and-scatter gradient) on CPU.
    """
    if kind == "none" or size == 1:
        return x
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    x = x[:, : oh * size, : ow * size, :].reshape(n, oh, size, ow, size, c)
    if kind == "max":
        return jnp.max(x, axis=(2, 4))
    if kind == "avg":
        return jnp.mean(x, axis=(2, 4))
    if kind == "lp":
        s = jnp.sum(jnp.square(x), axis=(2, 4))
        positive = s > 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)
    raise ValueError(f"unknown pool {kind!r}; use one of {POOLS}")


def global_avg_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(-3, -2))


# ----------------------------------------------------------------------------- composite


def maybe_dropout(rate: float, enabled: bool, rngs: nnx.Rngs) -> Dropout | None:
    """A Dropout module where the config asks for one (enabled and rate > 0), else None.

    A model built with rate 0 has no dropout leaves at all (no random bits drawn per step); to
    sweep the rate as a traced value, build the model with a rate > 0 and replace the leaves.
    """
    return Dropout(rate, rngs=rngs) if enabled and rate > 0 else None


class DenseLayer(nnx.Module):
    """Linear -> optional BatchNorm1d -> activation -> optional dropout."""

    def __init__(self, in_features: int, out_features: int, *, activation: str,
                 batch_norm: bool, bn_momentum: float, dropout: Dropout | None, init: str,
                 rngs: nnx.Rngs):
        self.linear = Linear(in_features, out_features, init=init, rngs=rngs)
        self.bn = BatchNorm(out_features, momentum=bn_momentum) if batch_norm else None
        self.activation = activation
        self.dropout = dropout

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.linear(x)
        if self.bn is not None:
            x = self.bn(x)
        x = ACTIVATIONS[self.activation](x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x
