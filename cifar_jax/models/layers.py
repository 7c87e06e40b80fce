"""Building blocks shared by every model: PyTorch-faithful initialisation, Conv2d, Linear,
BatchNorm, Dropout with a traced rate, activations and pooling.

Why own layers instead of `nnx.Conv` / `nnx.Linear` / `nnx.BatchNorm` / `nnx.Dropout`:

- `Conv2d` has two numerically equivalent implementations behind one switch (`conv_impl`):
  XLA's convolution, and im2col ("patches": kh*kw static slices + one matmul). Under `jax.vmap`
  over per-seed weights XLA:CPU turns convolutions into slow grouped convolutions, while the
  patches form becomes batched matmuls (measured: README, "Performance").
- Initialisation follows the PyTorch formulas exactly (fan_in = kh*kw*in_channels for convs).
- `BatchNorm` updates its running variance with the *unbiased* batch variance, as PyTorch does
  (Flax uses the biased one; the difference matters for BatchNorm1d at the tutorial's batch 4).
- `Dropout` keeps its rate in a `DropoutRate` variable, so the training core can make the rate a
  traced value per vmapped run by replacing those leaves of the state.

Train vs eval: `Dropout.deterministic` and `BatchNorm.use_running_average`, switched for a
whole model by NNX's `model.train()` / `model.eval()`. Modules are built in training mode.
"""

from __future__ import annotations

import dataclasses
import functools
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
# Activations whose every output is one exactly rounded operation of its input: XLA recomputes
# them bit for bit in any fusion (`window_max`).
EXACT_ACTIVATIONS = ("relu", "leaky_relu")
POOLS = ("max", "avg", "lp", "none")
# element: each activation dropped alone (nn.Dropout); channel: whole feature maps (nn.Dropout2d).
DROPOUT_KINDS = ("element", "channel")
PADDINGS = ("VALID", "SAME")
CONV_IMPLS = ("xla", "patches")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Compute:
    """How a model's convolutions and matmuls compute, fixed at construction (chosen per backend
    by `cifar_jax.core.execution.plan`): the convolution formulation and the arithmetic dtype.
    Parameters, batch norm and the loss stay float32 whatever `dtype` is."""

    conv_impl: str = "xla"  # 'xla' | 'patches': the same numbers, different speed per backend
    dtype: str = "float32"  # 'float32' | 'bfloat16'

    def __post_init__(self):
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl={self.conv_impl!r}; use one of {CONV_IMPLS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; use one of {DTYPES}")


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
    x = _pad_spatial(x, pads)
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    f = s2d_factor or space_to_depth_factor((kh, kw), c, o, (oh, ow), (sh, sw), batch=n)
    if f == 1:
        return jnp.dot(_im2col(x, kh, kw, sh, sw), kernel.reshape(kh * kw * c, o))
    if (sh, sw) != (1, 1):
        raise ValueError(f"space-to-depth needs stride 1, got strides {(sh, sw)}")
    y = _blocked_conv(x, kernel, f)  # (n, obh, obw, f*f*o)
    n, obh, obw, _ = y.shape
    y = y.reshape(n, obh, obw, f, f, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, obh * f, obw * f, o)
    return y[:, :oh, :ow] if (obh * f, obw * f) != (oh, ow) else y


def _pad_spatial(x: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """NHWC `x` with explicit (lo, hi) padding on H and W (`explicit_padding`)."""
    if any(p for pair in pads for p in pair):
        x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    return x


def _blocked_conv(x: jax.Array, kernel: jax.Array, f: int) -> jax.Array:
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
    return jnp.dot(_im2col(x, kbh, kbw, 1, 1), blocks)


class Conv2d(nnx.Module):
    """2-D convolution on NHWC inputs with an HWIO kernel (like `nnx.Conv`).

    impl='xla' calls `lax.conv_general_dilated`; impl='patches' pads, takes kh*kw strided static
    slices, concatenates them on the channel axis (order (i, j, c), matching the HWIO kernel
    reshaped to (kh*kw*C, O)) and does one matmul. Both give the same numbers. `dtype` is the
    arithmetic dtype: the float32 kernel is cast per call, so parameters stay float32.
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

    def pool_windows(self, x: jax.Array, size: int) -> jax.Array | None:
        """The convolution with its output already grouped in pooling windows, (n, oh/size,
        ow/size, size*size, O), when space-to-depth blocks of the pool's size make that layout
        for free (patches, stride 1, the block size `conv_patches` would choose, whole blocks):
        the pool then reduces one axis, with no transposes forward or backward. None otherwise."""
        pads = explicit_padding(self.padding, x.shape[-3:-1], self.kernel_size, self.strides)
        (kh, kw), (c, o) = self.kernel_size, (self.in_features, self.out_features)
        oh, ow = (conv_output_size(x.shape[-3 + axis], k, 1, self.padding, axis) for axis, k in enumerate((kh, kw)))
        if (self.impl != "patches" or self.strides != (1, 1) or size < 2 or oh % size or ow % size
                or space_to_depth_factor((kh, kw), c, o, (oh, ow), (1, 1), batch=x.shape[0]) != size):
            return None
        x, kernel = _cast(self.dtype, x, self.kernel[...])
        y = _blocked_conv(_pad_spatial(x, pads), kernel, size)
        return _add_bias(y.reshape(*y.shape[:3], size * size, o), self.bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        pads = explicit_padding(self.padding, x.shape[-3:-1], self.kernel_size, self.strides)
        x, kernel = _cast(self.dtype, x, self.kernel[...])
        if self.impl == "xla":
            y = lax.conv_general_dilated(x, kernel, self.strides, pads,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            y = conv_patches(x, kernel, self.strides, pads)
        return _add_bias(y, self.bias)


class Linear(nnx.Module):
    """Dense layer, kernel (in, out), initialised like `Conv2d` (fan_in = in_features)."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 init: str = "torch_default", dtype: str = "float32", rngs: nnx.Rngs):
        self.in_features = in_features
        self.dtype = Compute(dtype=dtype).dtype
        self.out_features = out_features
        self.kernel = nnx.Param(init_kernel(rngs.params(), (in_features, out_features), init,
                                            in_features, out_features))
        self.bias = (nnx.Param(init_bias(rngs.params(), (out_features,), init, in_features))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x, kernel = _cast(self.dtype, x, self.kernel[...])
        return _add_bias(jnp.dot(x, kernel), self.bias)


def _cast(dtype: str, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    return arrays if dtype == "float32" else tuple(a.astype(dtype) for a in arrays)


def _add_bias(y: jax.Array, bias: nnx.Param | None) -> jax.Array:
    return y if bias is None else y + bias[...].astype(y.dtype)


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
        x = x.astype(jnp.float32)  # statistics of bfloat16 activations would lose precision
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

    kind 'element' drops each activation alone; 'channel' (PyTorch's Dropout2d) drops whole
    feature maps of NHWC inputs -- one draw per (example, channel), shared by every position --
    since neighbouring activations of a map are correlated and element dropout barely removes
    their information. Both scale the kept values by 1 / (1 - rate), the keep probability
    rounded to 2**-16 as the mask draws it (`keep_mask`).

    Keys come from the module's own fork of the 'dropout' stream of the `nnx.Rngs` given at
    construction, so each seed's dropout randomness is part of its model state (the RngKey /
    RngCount leaves): read them back after a step like the batch statistics.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False, kind: str = "element"):
        if kind not in DROPOUT_KINDS:
            raise ValueError(f"unknown dropout kind {kind!r}; use one of {DROPOUT_KINDS}")
        self.rate = DropoutRate(jnp.asarray(rate, jnp.float32))
        self.deterministic = deterministic
        self.kind = kind
        self.rngs = rngs.dropout.fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic:
            return x
        mask, keep = keep_mask(self.rngs(), 1.0 - self.rate[...].astype(jnp.float32),
                               dropout_mask_shape(x.shape, self.kind))
        # Scaled in float32: bfloat16(0.9) is 0.8984, a 0.2% bias on the expectation.
        return jnp.where(mask, (x.astype(jnp.float32) / keep).astype(x.dtype), jnp.zeros_like(x))


def keep_mask(key: jax.Array, keep: jax.Array, shape: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """A Bernoulli(`keep`) mask of `shape` from 16 random bits an element, and the probability it
    keeps with: `keep` rounded to a multiple of 2**-16 (at most 7.6e-6 away; exact for rates like
    0.25 or 0.5), so scaling by it keeps the expectation exact. One threefry evaluation gives 32
    bits, two elements here; `jax.random.bernoulli` spends it on one, and generating the bits was
    ~16% of the fifth study's CNN training step on CPU."""
    leading = shape[0]
    bits = jax.random.bits(key, (-(-leading // 2), *shape[1:]), jnp.uint32)
    threshold = jnp.round(jnp.clip(keep, 0.0, 1.0) * 65536.0).astype(jnp.uint32)
    mask = jnp.concatenate([(bits & 0xFFFF) < threshold, (bits >> 16) < threshold], axis=0)[:leading]
    return mask, threshold.astype(jnp.float32) / 65536.0


def dropout_mask_shape(shape: Sequence[int], kind: str) -> tuple[int, ...]:
    """The shape of one dropout draw: every element, or (N, 1, ..., 1, C) for whole channels."""
    if kind == "element":
        return tuple(shape)
    if len(shape) < 3:
        raise ValueError(f"channel dropout needs (N, ..., C) feature maps, got shape {tuple(shape)}")
    return (shape[0], *(1,) * (len(shape) - 2), shape[-1])


# ----------------------------------------------------------------------------- pooling


def activate(module: nnx.Module, name: str, x: jax.Array, *, sow_dead: bool = True) -> jax.Array:
    """Applies activation `name`; for ReLU also sows its dead channels (`sow_dead_channels`)
    unless the caller sows them from a smaller tensor with the same dead channels."""
    y = ACTIVATIONS[name](x)
    if name == "relu" and sow_dead:
        sow_dead_channels(module, y)
    return y


def sow_dead_channels(module: nnx.Module, y: jax.Array) -> None:
    """Sows which channels of ReLU output `y` are zero for every example and position of the batch
    (`metrics.dead_unit_fraction`, the dying-ReLU diagnostic of the studies) when training captures
    it: per channel, so that microbatches combine into the whole batch's answer."""
    if _capturing(module):
        module.sow(nnx.Intermediate, "dead_channels", jnp.all(y <= 0, axis=tuple(range(y.ndim - 1))))


def _capturing(module: nnx.Module) -> bool:
    """Whether `module` runs inside `nnx.capture` (the training step collects its intermediates):
    outside it a sow is deprecated and would leave an Intermediate variable in the module."""
    return hasattr(module, "__captures__")


def pool2d(x: jax.Array, kind: str, size: int, exact_input: bool = False) -> jax.Array:
    """Non-overlapping pooling, window = stride = size, floor mode (PyTorch's defaults).

    max / avg / lp (power 2: sqrt of the window's sum of squares, PyTorch's LPPool2d(2, size)
    with a zero gradient where the window is all zeros) / none. Implemented by reshaping, which
    is cheaper than reduce_window (and its select-and-scatter gradient) on CPU. `exact_input`:
    see `window_max`.
    """
    if kind == "none" or size == 1:
        return x
    n, h, w, c = x.shape
    oh, ow = h // size, w // size
    x = x[:, : oh * size, : ow * size, :].reshape(n, oh, size, ow, size, c)
    if kind == "max":
        return window_max(x, (2, 4), exact_input)
    if kind == "avg":
        return jnp.mean(x, axis=(2, 4))
    if kind == "lp":
        s = jnp.sum(jnp.square(x), axis=(2, 4))
        positive = s > 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)
    raise ValueError(f"unknown pool {kind!r}; use one of {POOLS}")


def pool_window_axis(x: jax.Array, kind: str, exact_input: bool = False) -> jax.Array:
    """`pool2d` of a convolution's output grouped in windows, (n, oh, ow, window, c)
    (`Conv2d.pool_windows`): max or avg over the window axis."""
    if kind == "max":
        return window_max(x, (3,), exact_input)
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
    forward's maximum may match no position of the backward's `x` (count 0, an inf gradient)."""
    return jnp.max(x, axis=axes)


def _window_max_fwd(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = jnp.max(x, axis=axes)
    return y, (x, y)


def _window_max_bwd(axes: tuple[int, ...], residuals: tuple[jax.Array, jax.Array], g: jax.Array
                    ) -> tuple[jax.Array]:
    x, y = residuals
    at_max = x == jnp.expand_dims(y, axes)
    share = g / jnp.sum(at_max, axis=axes).astype(g.dtype)
    return (jnp.where(at_max, jnp.expand_dims(share, axes), jnp.zeros((), g.dtype)),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def window_max(x: jax.Array, axes: tuple[int, ...], exact_input: bool) -> jax.Array:
    """Max over `axes`; with the one-pass backward (`_window_max`) when `exact_input` says XLA
    recomputes `x` bit for bit in every fusion. Holds for an exactly rounded float32 activation
    of a convolution plus bias (`EXACT_ACTIVATIONS`), dropout included; fails after batch norm,
    whose affine map XLA contracts to fused multiply-adds in some fusions and not in others."""
    return _window_max(x, axes) if exact_input else jnp.max(x, axis=axes)


def global_avg_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(-3, -2))


# ----------------------------------------------------------------------------- composite


def maybe_dropout(rate: float, enabled: bool, rngs: nnx.Rngs, kind: str = "element") -> Dropout | None:
    """A Dropout module of `kind` where the config asks for one (enabled and rate > 0), else None.

    A model built with rate 0 has no dropout leaves at all (no random bits drawn per step); to
    sweep the rate as a traced value, build the model with a rate > 0 and replace the leaves.
    """
    return Dropout(rate, rngs=rngs, kind=kind) if enabled and rate > 0 else None


class DenseLayer(nnx.Module):
    """Linear -> optional BatchNorm1d -> activation -> optional dropout."""

    def __init__(self, in_features: int, out_features: int, *, activation: str,
                 batch_norm: bool, bn_momentum: float, dropout: Dropout | None, init: str,
                 dtype: str = "float32", rngs: nnx.Rngs):
        self.linear = Linear(in_features, out_features, init=init, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(out_features, momentum=bn_momentum) if batch_norm else None
        self.activation = activation
        self.dropout = dropout

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.linear(x)
        if self.bn is not None:
            x = self.bn(x)
        x = activate(self, self.activation, x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x


@dataclasses.dataclass(frozen=True)
class DenseHeadSpec:
    """The classifier every model ends with: hidden dense layers, optional dropout before the
    output layer, the output layer."""

    widths: tuple[int, ...]
    activation: str
    batch_norm: bool
    bn_momentum: float
    rate: float
    hidden_dropout: bool  # after every hidden layer
    head_dropout: bool  # once before the output layer
    init: str


def build_dense_head(model: nnx.Module, in_features: int, num_classes: int, spec: DenseHeadSpec,
                     compute: Compute, rngs: nnx.Rngs) -> None:
    """Gives `model` its `dense` layers, `head_dropout` and `out` (the same parameter paths in every
    model); `apply_dense_head` runs them."""
    model.dense = nnx.List()
    width = in_features
    for f in spec.widths:
        model.dense.append(DenseLayer(
            width, int(f), activation=spec.activation, batch_norm=spec.batch_norm, bn_momentum=spec.bn_momentum,
            dropout=maybe_dropout(spec.rate, spec.hidden_dropout, rngs), init=spec.init, dtype=compute.dtype,
            rngs=rngs))
        width = int(f)
    model.head_dropout = maybe_dropout(spec.rate, spec.head_dropout, rngs)
    model.out = Linear(width, num_classes, init=spec.init, dtype=compute.dtype, rngs=rngs)


def apply_dense_head(model: nnx.Module, x: jax.Array) -> jax.Array:
    for layer in model.dense:
        x = layer(x)
    if model.head_dropout is not None:
        x = model.head_dropout(x)
    return model.out(x)
