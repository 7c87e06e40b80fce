"""Building blocks shared by every model: PyTorch-faithful initialisation, Linear, BatchNorm,
Dropout with a traced rate, activations, the dense classifier head, and `Compute` (how a model
computes, chosen by the execution plan). Convolutions live in `conv` (their CPU form in
`patches`), pooling in `pooling`.

Why own layers instead of `nnx.Conv` / `nnx.Linear` / `nnx.BatchNorm` / `nnx.Dropout`:

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
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from cifar_jax.models.matmul import kernel_matmul

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
# them bit for bit in any fusion (`pooling.window_max`).
EXACT_ACTIVATIONS = ("relu", "leaky_relu")
POOLS = ("max", "avg", "lp", "none")
# element: each activation dropped alone (nn.Dropout); channel: whole feature maps (nn.Dropout2d).
DROPOUT_KINDS = ("element", "channel")
PADDINGS = ("VALID", "SAME")
CONV_IMPLS = ("xla", "patches", "winograd")
DTYPES = ("float32", "bfloat16")
POOL_BACKWARDS = ("jax", "one_pass")


@dataclasses.dataclass(frozen=True)
class Compute:
    """How a model computes, fixed at construction (chosen per backend by
    `cifar_jax.core.execution.plan`): the convolution formulation, the arithmetic dtype, and which
    max-pool backward may be used. Parameters, batch norm and the loss stay float32 whatever
    `dtype` is. None of these changes results beyond float reassociation, except `dtype`."""

    conv_impl: str = "xla"  # 'xla' | 'patches' | 'winograd': the same numbers, different speed per backend
    dtype: str = "float32"  # 'float32' | 'bfloat16'
    # 'one_pass': a max pool over an exactly recomputed input may use `pooling.window_max`'s
    # one-pass backward (verified on XLA:CPU only, so the plan allows it on CPU alone); 'jax':
    # JAX's own max gradient.
    pool_backward: str = "jax"

    def __post_init__(self):
        for field, value, choices in (("conv_impl", self.conv_impl, CONV_IMPLS), ("dtype", self.dtype, DTYPES),
                                      ("pool_backward", self.pool_backward, POOL_BACKWARDS)):
            if value not in choices:
                raise ValueError(f"{field}={value!r}; use one of {choices}")


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
        x, kernel = cast(self.dtype, x, self.kernel[...])
        return add_bias(kernel_matmul(x, kernel), self.bias)


def cast(dtype: str, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """`arrays` in the arithmetic dtype (unchanged for float32)."""
    return arrays if dtype == "float32" else tuple(a.astype(dtype) for a in arrays)


def add_bias(y: jax.Array, bias: nnx.Param | None) -> jax.Array:
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


# ----------------------------------------------------------------------------- activations


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
