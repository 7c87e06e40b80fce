"""Models: PyTorch parameter counts, shapes, train/eval semantics, init distributions, vmapped
initialisation, conv implementations, dropout-rate leaves and config validation.

Kept fast on a 2-core CPU: parameter counts and output shapes come from `nnx.eval_shape` /
`jax.eval_shape` (no compilation); numerical checks use small models. Keys are 'rbg' keys: the
model code is the same for every PRNG implementation, and threefry's random-bit programs take
3-5x longer to compile on XLA:CPU (jax_threefry_partitionable=True, the default).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from helpers import assert_close_reassociated
from cifar_jax.core import metrics
from cifar_jax.errors import ConfigError
from cifar_jax.models import create_model, validate_model_config
from cifar_jax.models import block as block_lib
from cifar_jax.models import conv, layers, pooling, stage_form
from cifar_jax.models.layers import DropoutRate

REPO = Path(__file__).resolve().parents[1]
CIFAR = (32, 32, 3)
FASHION = (28, 28, 1)


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Load configs/<name>.py by path, the way ml_collections' config_flags does."""
    spec = importlib.util.spec_from_file_location(f"_study_config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def rbg_rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(params=jax.random.key(seed, impl="rbg"), dropout=jax.random.key(seed + 1, impl="rbg"))


def build(model_cfg, input_shape, num_classes=10, seed=0):
    """create_model, initialised in one compiled program (eager init compiles every op)."""
    create = lambda: create_model(model_cfg, input_shape=input_shape,  # noqa: E731
                                  num_classes=num_classes, rngs=rbg_rngs(seed))
    graphdef, _ = nnx.split(nnx.eval_shape(create))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(create())[1])())


def random_params_model(model_cfg, input_shape, seed=0):
    """A model whose parameters are filled from numpy (no init to compile); for models without
    BatchNorm or dropout, i.e. with no state but parameters."""
    graphdef, params, rest = nnx.split(abstract(model_cfg, input_shape), nnx.Param, ...)
    assert not jax.tree.leaves(rest)
    rng = np.random.RandomState(seed)
    params = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.randn(*a.shape), a.dtype), params)
    return nnx.merge(graphdef, params)


@nnx.jit
def apply(model, x):
    """model(x) compiled; NNX carries the state updates (batch stats, rng counts) back."""
    return model(x)


def abstract(model_cfg, input_shape, num_classes=10):
    return nnx.eval_shape(lambda: create_model(model_cfg, input_shape=input_shape,
                                               num_classes=num_classes, rngs=nnx.Rngs(0)))


def num_params(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def small_cnn(**overrides) -> ml_collections.ConfigDict:
    """A tiny CNN on 8x8x3 inputs: conv 4@3x3 SAME -> pool -> dense 8 -> 10."""
    cfg = load_config("lenet_tutorial").model
    cfg.conv_features, cfg.kernel_size, cfg.strides = (4,), (3,), (1,)
    cfg.padding, cfg.dense_features = "SAME", (8,)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


SMALL = (8, 8, 3)


def images(shape, n=4, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randn(n, *shape), jnp.float32)


# ----------------------------------------------------------------------------- PyTorch counts


def t_conv(cin, cout, k, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def t_linear(i, o):
    return i * o + o


def t_bn(c):
    return 2 * c


def t_resnet18(cin, num_classes):
    n = t_conv(cin, 64, 3, False) + t_bn(64)
    c = 64
    for i, f in enumerate((64, 128, 256, 512)):
        for j in range(2):
            stride = 2 if i > 0 and j == 0 else 1
            n += t_conv(c, f, 3, False) + t_bn(f) + t_conv(f, f, 3, False) + t_bn(f)
            if stride != 1 or c != f:
                n += t_conv(c, f, 1, False) + t_bn(f)
            c = f
    return n + t_linear(512, num_classes)


def t_block_cnn(cin, channels, k, classifier, num_classes):
    n = 0
    for c in channels:
        n += k * t_conv(cin, c, 3) + t_linear(cin, k) + t_bn(c)
        cin = c
    for f in classifier:
        n += t_linear(cin, f)
        cin = f
    return n + t_linear(cin, num_classes)


STUDIES = {
    # name: (config loader, input shape, PyTorch parameter count from layer shapes)
    "lenet_tutorial": (lambda: load_config("lenet_tutorial"), CIFAR,
                       t_conv(3, 6, 5) + t_conv(6, 16, 5) + t_linear(400, 120) + t_linear(120, 84)
                       + t_linear(84, 10)),
    "three_layer_cnn": (lambda: load_config("three_layer_cnn"), CIFAR,
                        t_conv(3, 32, 3) + t_conv(32, 128, 5) + t_linear(8 * 8 * 128, 256)
                        + t_linear(256, 10)),
    "cnn_bn_dropout": (lambda: load_config("cnn_bn_dropout"), CIFAR,
                       t_conv(3, 64, 3) + t_bn(64) + t_conv(64, 128, 3) + t_bn(128)
                       + t_linear(8 * 8 * 128, 10)),
    "mlp": (lambda: load_config("mlp"), CIFAR, t_linear(3072, 512) + t_bn(512) + t_linear(512, 10)),
    "block_cnn": (lambda: load_config("block_cnn"), CIFAR,
                  t_block_cnn(3, (64, 128, 256, 512), 6, (256, 128, 64), 10)),
    "fashion_conv_conv_fc": (lambda: load_config("fashion_mnist", "conv_conv_fc"), FASHION,
                             t_conv(1, 32, 3) + t_conv(32, 64, 3) + t_linear(7 * 7 * 64, 128)
                             + t_linear(128, 10)),
    "fashion_conv_fc_fc": (lambda: load_config("fashion_mnist", "conv_fc_fc"), FASHION,
                           t_conv(1, 32, 3) + t_linear(14 * 14 * 32, 128) + t_linear(128, 64)
                           + t_linear(64, 10)),
    "fashion_fc_fc_fc": (lambda: load_config("fashion_mnist", "fc_fc_fc"), FASHION,
                         t_linear(784, 64) + t_linear(64, 128) + t_linear(128, 256) + t_linear(256, 10)),
    "fashion_conv_conv_conv": (lambda: load_config("fashion_mnist", "conv_conv_conv"), FASHION,
                               t_conv(1, 32, 3) + t_conv(32, 64, 3) + t_conv(64, 128, 3)
                               + t_linear(3 * 3 * 128, 10)),
    "fashion_resnet18": (lambda: load_config("fashion_mnist", "resnet18"), FASHION, t_resnet18(1, 10)),
    "resnet18_cifar": (lambda: _resnet_cifar(), CIFAR, t_resnet18(3, 10)),
}


def _resnet_cifar():
    cfg = load_config("lenet_tutorial")
    cfg.model.name = "resnet18"
    return cfg


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_study_param_count_and_output_shape(study):
    loader, shape, expected = STUDIES[study]
    cfg = loader()
    validate_model_config(cfg.model, shape, 10)
    model = abstract(cfg.model, shape)
    assert num_params(model) == expected
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    for mode in ("train", "eval"):
        m = nnx.merge(graphdef, state)
        getattr(m, mode)()
        g, s = nnx.split(m)
        out = jax.eval_shape(lambda s, x: nnx.merge(g, s, copy=True)(x), s, x)
        assert out.shape == (2, 10) and out.dtype == jnp.float32


# ----------------------------------------------------------------------------- conv impls


CONV_CASES = [(3, 1, "VALID"), (3, 2, "VALID"), (3, 1, "SAME"), (4, 2, "SAME"), (3, 2, 1)]


def test_conv_impls_agree():
    """xla == patches for outputs and gradients: VALID / SAME (asymmetric for k=4, stride 2) /
    PyTorch-style padding=1, strides 1 and 2; all cases in one compiled program."""
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, 9, 8, 3), jnp.float32)
    cases = []
    for k, strides, padding in CONV_CASES:
        params = {"kernel": jnp.asarray(rng.randn(k, k, 3, 5), jnp.float32),
                  "bias": jnp.asarray(rng.randn(5), jnp.float32)}
        defs = {impl: nnx.split(nnx.eval_shape(lambda impl=impl: conv.Conv2d(
            3, 5, k, strides=strides, padding=padding, impl=impl, rngs=nnx.Rngs(0))))
            for impl in ("xla", "patches")}
        cases.append((params, defs, (k, strides, padding)))

    def value_and_grads(defs, impl, params, x):
        graphdef, abstract_state = defs[impl]

        def loss(params, x):
            state = jax.tree.map(lambda v: v, abstract_state)  # a fresh copy to fill in
            nnx.replace_by_pure_dict(state, params)
            y = nnx.merge(graphdef, state)(x)
            return jnp.sum(jnp.sin(y)), y

        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
        return y, grads

    @jax.jit
    def run(all_params, x):
        return [{impl: value_and_grads(defs, impl, p, x) for impl in ("xla", "patches")}
                for p, (_, defs, _) in zip(all_params, cases)]

    results = run([c[0] for c in cases], x)
    for (params, _, (k, strides, padding)), res in zip(cases, results):
        (y1, g1), (y2, g2) = res["xla"], res["patches"]
        pads = conv.explicit_padding(padding, (9, 8), (k, k), (strides, strides))
        ref = jax.lax.conv_general_dilated(x, params["kernel"], (strides, strides), pads,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["bias"]
        for actual, expected in [(y1, ref), (y2, y1), *zip(jax.tree.leaves(g2), jax.tree.leaves(g1))]:
            assert_close_reassociated(actual, expected, err_msg=str((k, strides, padding)))


def test_conv_output_size_and_torch_padding():
    # PyTorch Conv2d(k=3, stride=2, padding=1) on 32 -> 16; VALID 5x5 on 32 -> 28; SAME stride 2 on 9 -> 5.
    assert conv.conv_output_size(32, 3, 2, 1) == 16
    assert conv.conv_output_size(32, 5, 1, "VALID") == 28
    assert conv.conv_output_size(9, 3, 2, "SAME") == 5


def test_compute_refuses_unknown_choices():
    with pytest.raises(ValueError, match="conv_impl"):
        layers.Compute("auto")  # execution.plan resolves 'auto' before a model is built
    with pytest.raises(ValueError, match="dtype"):
        layers.Compute("xla", "float16")


def test_model_conv_impls_agree_vmapped():
    """The same parameters under both graphdefs give the same logits, also vmapped over seeds."""
    cfgs = {impl: small_cnn(conv_impl=impl, conv_features=(4, 6), kernel_size=(3, 3),
                            strides=(1, 1), padding="VALID") for impl in ("xla", "patches")}
    graphdefs = {impl: nnx.split(abstract(cfg, (12, 12, 3)))[0] for impl, cfg in cfgs.items()}
    model = random_params_model(cfgs["xla"], (12, 12, 3))
    params = jax.tree.map(lambda a: jnp.stack([a, a * 1.5]), nnx.state(model, nnx.Param))
    x = images((12, 12, 3))

    @jax.jit
    def logits(params):
        return {impl: jax.vmap(lambda p, g=g: nnx.merge(g, p, copy=True)(x))(params)
                for impl, g in graphdefs.items()}

    out = logits(params)
    np.testing.assert_allclose(out["patches"], out["xla"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out["xla"][0], out["xla"][1])


# ----------------------------------------------------------------------------- train / eval


@pytest.fixture(scope="module")
def bn_dropout_model():
    """Small CNN with BatchNorm (conv and dense) and dropout everywhere, shared by the mode tests."""
    cfg = small_cnn(dropout_rate=0.5, dropout_placement="all", dense_features=(8, 8),
                    conv_batch_norm=True, dense_batch_norm=True)
    return build(cfg, SMALL)


def _bn_stats(model):
    return jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))  # a copy, not live references


def test_train_eval_and_batch_stats(bn_dropout_model):
    model = nnx.clone(bn_dropout_model)
    x = images(SMALL)
    before = _bn_stats(model)
    model.eval()
    e1, e2 = apply(model, x), apply(model, x)
    np.testing.assert_array_equal(e1, e2)  # eval is deterministic ...
    jax.tree.map(np.testing.assert_array_equal, before, _bn_stats(model))  # ... and keeps the stats
    model.train()
    t1, t2 = apply(model, x), apply(model, x)
    assert not np.allclose(t1, e1)
    assert not np.allclose(t1, t2)  # the dropout stream advances between calls
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, _bn_stats(model))
    assert all(jax.tree.leaves(changed)) and len(jax.tree.leaves(changed)) == 6  # 3 BNs x (mean, var)


def test_dropout_rate_leaves_in_model_state(bn_dropout_model):
    model = nnx.clone(bn_dropout_model)
    rates = nnx.state(model, DropoutRate)
    assert len(jax.tree.leaves(rates)) == 3  # one conv stage + two hidden dense layers
    assert not jax.tree.leaves(nnx.state(model, nnx.All(nnx.Param, DropoutRate)))  # not trained
    x = images(SMALL)
    model.train()
    assert not np.allclose(apply(model, x), apply(model, x))
    nnx.update(model, jax.tree.map(jnp.zeros_like, rates))  # same compiled program, rate 0
    np.testing.assert_array_equal(apply(model, x), apply(model, x))  # no randomness left
    # Placement decides where dropout lives; rate 0 builds none at all.
    for placement, count in (("conv", 1), ("dense", 2), ("head", 1), ("all", 3), ("none", 0)):
        m = abstract(small_cnn(dropout_rate=0.5, dropout_placement=placement, dense_features=(8, 8)), SMALL)
        assert len(jax.tree.leaves(nnx.state(m, DropoutRate))) == count, placement
    assert not jax.tree.leaves(nnx.state(abstract(small_cnn(dropout_rate=0.0), SMALL), DropoutRate))


def test_train_equals_eval_without_dropout_or_bn():
    model = random_params_model(small_cnn(dropout_rate=0.0), SMALL)
    x = images(SMALL)
    model.train()
    t = apply(model, x)
    model.eval()
    assert_close_reassociated(t, apply(model, x))  # two compiled programs: sums may be ordered differently


def test_batchnorm_pytorch_semantics():
    def run(x):
        bn = layers.BatchNorm(3, momentum=0.9)
        return bn(x), bn.mean[...], bn.var[...]

    x = images((5, 5, 3), n=4, seed=3) * 2.0 + 1.0
    y = jax.jit(run)(x)
    xs = np.asarray(x).reshape(-1, 3)  # 100 values per channel
    np.testing.assert_allclose(y[1], 0.1 * xs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[2], 0.9 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)  # unbiased
    ref = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5)  # biased for normalising
    np.testing.assert_allclose(np.asarray(y[0]).reshape(-1, 3), ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- dropout


def test_dropout_traced_rate():
    drop = layers.Dropout(0.5, rngs=rbg_rngs())
    graphdef, state = nnx.split(drop)
    assert len(jax.tree.leaves(nnx.state(drop, DropoutRate))) == 1
    x = jnp.ones((20000,))

    @jax.jit
    def run(state, rate):
        state = jax.tree.map(lambda v: v.replace(rate) if isinstance(v, DropoutRate) else v, state,
                             is_leaf=lambda v: isinstance(v, nnx.Variable))
        return nnx.merge(graphdef, state, copy=True)(x)

    for rate in (0.0, 0.25, 0.75):
        y = np.asarray(run(state, jnp.float32(rate)))
        assert abs((y == 0).mean() - rate) < 0.02
        np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - rate), rtol=1e-6)  # elementwise: one rounding
    drop.eval()
    np.testing.assert_array_equal(drop(x), x)


def test_channel_dropout_drops_whole_feature_maps_with_a_traced_rate():
    """Dropout2d: one draw per (example, channel), constant over H and W; the kept maps are scaled
    by 1 / (1 - rate), so the expectation is preserved (mean over many maps ~ the input)."""
    drop = layers.Dropout(0.5, rngs=rbg_rngs(), kind="channel")
    graphdef, state = nnx.split(drop)
    x = 1.0 + jnp.arange(7 * 5)[None, :, None, None].reshape(1, 7, 5, 1) * jnp.ones((64, 1, 1, 128))

    @jax.jit
    def run(state, rate):
        state = jax.tree.map(lambda v: v.replace(rate) if isinstance(v, DropoutRate) else v, state,
                             is_leaf=lambda v: isinstance(v, nnx.Variable))
        return nnx.merge(graphdef, state, copy=True)(x)

    for rate in (0.25, 0.5):
        y = np.asarray(run(state, jnp.float32(rate)))
        kept = (y != 0)
        assert (kept == kept[:, :1, :1, :]).all()  # the mask is constant over H, W per (example, channel)
        assert abs(1.0 - kept[:, 0, 0, :].mean() - rate) < 0.03
        np.testing.assert_allclose(y[kept], (np.asarray(x) / (1.0 - rate))[kept], rtol=1e-6)
        np.testing.assert_allclose(y.mean(axis=(0, 3)), np.asarray(x)[0, :, :, 0], rtol=0.06)  # expectation
    element = np.asarray(layers.Dropout(0.5, rngs=rbg_rngs())(x)) != 0
    assert not (element == element[:, :1, :1, :]).all()  # element dropout differs over positions


def test_keep_mask_from_16_bits_keeps_with_the_rounded_probability():
    """Two mask elements per 32 random bits: the mask has the requested shape (odd leading sizes
    too), keeps with probability `keep` rounded to 2**-16 (the returned value, which the dropout
    scale uses), both halves of each word are used independently, and 0 / 1 are exact."""
    key = jax.random.key(3)
    for keep in (0.8, 0.5, 0.3):
        mask, effective = layers.keep_mask(key, jnp.float32(keep), (301, 40, 50))
        assert mask.shape == (301, 40, 50) and mask.dtype == jnp.bool_
        assert float(effective) == round(keep * 65536) / 65536 and abs(float(effective) - keep) <= 2**-17
        assert abs(float(mask.mean()) - keep) < 0.005  # 602,000 draws: ~5 standard deviations
        low, high = np.asarray(mask[:150]), np.asarray(mask[151:301])  # the two halves of the words
        both = (low & high).mean()
        assert abs(both - keep * keep) < 0.006  # independent, not copies of each other
    assert bool(layers.keep_mask(key, jnp.float32(1.0), (5, 3))[0].all())
    assert not bool(layers.keep_mask(key, jnp.float32(0.0), (5, 3))[0].any())


def test_channel_dropout_only_in_conv_stages():
    """dropout_kind='channel' makes the CNN's conv-stage dropout channel-wise, dense layers keep elements."""
    cfg = small_cnn(dropout_rate=0.5, dropout_placement="all", dense_features=(8,))
    cfg.dropout_kind = "channel"
    model = abstract(cfg, SMALL)
    assert [s.dropout.kind for s in model.stages] == ["channel"] * len(model.stages)
    assert [d.dropout.kind for d in model.dense] == ["element"]
    cfg.dropout_kind = "element"
    assert {s.dropout.kind for s in abstract(cfg, SMALL).stages} == {"element"}


# ----------------------------------------------------------------------------- init


def _expected_std(scheme, fan_in, fan_out):
    return {
        "torch_default": 1 / math.sqrt(fan_in) / math.sqrt(3),
        "xavier_uniform": math.sqrt(6 / (fan_in + fan_out)) / math.sqrt(3),
        "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
        "kaiming_uniform": math.sqrt(6 / fan_in) / math.sqrt(3),
        "kaiming_normal": math.sqrt(2 / fan_in),
        "lecun_normal": math.sqrt(1 / fan_in),
    }[scheme]


def test_init_schemes_std():
    cin, cout, k = 32, 256, 3  # 73,728 entries: the std estimate is good to ~0.5%

    @jax.jit
    def draw():
        out = {}
        for i, scheme in enumerate(layers.INIT_SCHEMES):
            layer = conv.Conv2d(cin, cout, k, init=scheme, rngs=rbg_rngs(i))
            out[scheme] = (layer.kernel[...], layer.bias[...])
        return out

    fan_in, fan_out = k * k * cin, k * k * cout
    for scheme, (kernel, bias) in draw().items():
        kernel = np.asarray(kernel)
        assert abs(kernel.mean()) < 0.02 * kernel.std(), scheme
        np.testing.assert_allclose(kernel.std(), _expected_std(scheme, fan_in, fan_out), rtol=0.03,
                                   err_msg=scheme)
        if scheme == "torch_default":
            bound = 1 / math.sqrt(fan_in)
            assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
            assert np.abs(bias).max() > 0.5 * bound
        else:
            np.testing.assert_array_equal(bias, 0.0)
        if scheme.endswith("uniform") or scheme == "torch_default":
            assert np.abs(kernel).max() <= math.sqrt(3) * _expected_std(scheme, fan_in, fan_out) * 1.0001


def test_init_conv_only():
    cfg = small_cnn(conv_features=(64,), kernel_size=(3,), padding="SAME", dense_features=(256,),
                    init="kaiming_normal", init_conv_only=True)
    model = build(cfg, (8, 8, 16))
    conv = model.stages[0].conv
    np.testing.assert_allclose(np.std(conv.kernel[...]), math.sqrt(2 / (9 * 16)), rtol=0.05)
    np.testing.assert_array_equal(conv.bias[...], 0.0)
    dense = model.dense[0].linear
    bound = 1 / math.sqrt(4 * 4 * 64)
    assert np.abs(dense.kernel[...]).max() <= bound  # torch_default: U(+-1/sqrt(fan_in))
    np.testing.assert_allclose(np.std(dense.kernel[...]), bound / math.sqrt(3), rtol=0.03)
    assert np.abs(dense.bias[...]).max() > 0


# ----------------------------------------------------------------------------- vmap over seeds


def test_vmapped_init_and_apply_per_seed():
    """The training core's pattern: vmap(build) -> states; graphdef from eval_shape; merge(copy=True)."""
    cfg = small_cnn(conv_batch_norm=True, dropout_rate=0.5, dropout_placement="dense")

    def init(key):
        k1, k2 = jax.random.split(key)
        model = create_model(cfg, input_shape=SMALL, num_classes=10, rngs=nnx.Rngs(params=k1, dropout=k2))
        return nnx.split(model)[1]

    graphdef = nnx.split(abstract(cfg, SMALL))[0]
    states = jax.jit(jax.vmap(init))(jax.random.split(jax.random.key(0, impl="rbg"), 3))
    params = nnx.filter_state(states, nnx.Param)
    rest = nnx.filter_state(states, nnx.Not(nnx.Param))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        assert leaf.shape[0] == 3
        if "bn" not in jax.tree_util.keystr(path):  # BN scale/bias start at 1/0 for every seed
            assert not np.allclose(leaf[0], leaf[1]) and not np.allclose(leaf[1], leaf[2]), path
    keys = [jax.random.key_data(k) for k in jax.tree.leaves(nnx.filter_state(rest, nnx.RngKey))]
    assert keys and all(not np.array_equal(k[0], k[1]) for k in keys)  # per-seed dropout streams
    x = images(SMALL)

    @jax.jit
    @jax.vmap
    def train_apply(params, rest):
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.train()
        y = model(x)
        return y, nnx.state(model, nnx.Not(nnx.Param))

    y, new_rest = train_apply(params, rest)
    assert y.shape == (3, 4, 10)
    assert not np.allclose(y[0], y[1])
    stats = nnx.filter_state(new_rest, nnx.BatchStat)
    for leaf in jax.tree.leaves(stats):
        assert not np.allclose(leaf[0], leaf[1])  # per-seed batch statistics
    old_counts = [x for x in jax.tree.leaves(nnx.filter_state(rest, nnx.RngCount))]
    new_counts = [x for x in jax.tree.leaves(nnx.filter_state(new_rest, nnx.RngCount))]
    assert [int(c[0]) for c in new_counts] == [int(c[0]) + 1 for c in old_counts]  # stream advanced


# ----------------------------------------------------------------------------- block CNN / ResNet


def test_block_fused_branches_equal_separate_branches():
    """One conv with k*C outputs == k separate branch convs, gate-weighted and batch-normed."""
    @jax.jit
    def run(x):
        blk = block_lib.Block(
            3, 4, 3, gate="softmax", activation="relu", dropout=None, bn_momentum=0.9,
            init="torch_default", dense_init="torch_default", compute=layers.Compute(), rngs=rbg_rngs())
        blk.eval()
        kernel, bias = blk.conv.kernel[...], blk.conv.bias[...]
        gate = jax.nn.softmax(jnp.mean(x, axis=(1, 2)) @ blk.gate.kernel[...] + blk.gate.bias[...])
        ref = 0
        for b in range(3):
            sl = slice(4 * b, 4 * (b + 1))
            z = jax.lax.conv_general_dilated(x, kernel[..., sl], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias[sl]
            z = pooling.pool2d(jax.nn.relu(z), "max", 2)
            ref = ref + gate[:, b, None, None, None] * z
        return blk(x), ref / jnp.sqrt(1 + 1e-5)  # eval mode: running mean 0, var 1

    y, ref = run(images((8, 8, 3), n=2))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_uniform_gate_is_a_fixed_average_without_gate_parameters():
    """gate='uniform' weights every branch 1/k: the block equals a linear-gate block whose gate
    outputs the constant 1/k (zero kernel, bias 1/k), and has no gate parameters to learn."""
    def block(gate):
        return block_lib.Block(3, 4, 3, gate=gate, activation="relu", dropout=None, bn_momentum=0.9,
                               init="torch_default", dense_init="torch_default", compute=layers.Compute(),
                               rngs=rbg_rngs())

    @jax.jit
    def run(x):
        uniform, linear = block("uniform"), block("none")
        linear.gate.kernel[...] = jnp.zeros_like(linear.gate.kernel[...])
        linear.gate.bias[...] = jnp.full((3,), 1 / 3)
        return uniform(x), linear(x), uniform.gate_weights(x)

    y, ref, weights = run(images((8, 8, 3), n=2))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, np.full((2, 3), 1 / 3), rtol=1e-6)
    assert "gate" not in nnx.state(nnx.eval_shape(lambda: block("uniform")), nnx.Param)
    assert "gate" in nnx.state(nnx.eval_shape(lambda: block("none")), nnx.Param)


def test_small_block_cnn_runs():
    cfg = load_config("block_cnn").model
    cfg.block_channels, cfg.num_branches, cfg.classifier_features = (4, 8), 2, (8,)
    for gate in block_lib.GATES:
        cfg.gate = gate
        validate_model_config(cfg, SMALL, 10)
    cfg.gate = "none"
    model = abstract(cfg, SMALL)
    assert num_params(model) == t_block_cnn(3, (4, 8), 2, (8,), 10)
    assert len(jax.tree.leaves(nnx.state(model, DropoutRate))) == 2  # dropout in the branches
    # Build and run (training mode) in one compiled program.
    out = jax.jit(lambda x: create_model(cfg, input_shape=SMALL, num_classes=10, rngs=rbg_rngs())(x))(
        images(SMALL))
    assert out.shape == (4, 10) and np.isfinite(out).all()


# ----------------------------------------------------------------------------- pooling / activations


@jax.jit
def _pools(x):
    return {kind: pooling.pool2d(x, kind, 2) for kind in layers.POOLS}


def test_pooling_matches_pytorch_definitions():
    x = jnp.arange(2 * 5 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 5, 1) - 20.0
    xs = np.asarray(x)[:, :4, :4, 0].reshape(2, 2, 2, 2, 2)  # floor mode drops the 5th row/col
    pools = _pools(x)
    np.testing.assert_allclose(pools["max"][..., 0], xs.max(axis=(2, 4)))
    np.testing.assert_allclose(pools["avg"][..., 0], xs.mean(axis=(2, 4)))
    # rtol 1e-6: a sum of 4 squares and a square root, a few roundings whatever the order
    np.testing.assert_allclose(pools["lp"][..., 0], np.sqrt((xs ** 2).sum(axis=(2, 4))), rtol=1e-6)
    np.testing.assert_array_equal(pools["none"], x)
    # LP pooling has a finite (zero) gradient on an all-zero window, like PyTorch after a ReLU.
    g = jax.grad(lambda z: pooling.pool2d(z, "lp", 2).sum())(jnp.zeros((1, 2, 2, 1)))
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("axes, shape", [((2, 4), (2, 3, 2, 3, 2, 5)), ((3,), (2, 3, 3, 4, 5))])
def test_window_max_has_jax_gradient_with_ties(axes, shape):
    """The pooling max's one-pass backward equals JAX's rule (ties share the gradient evenly), on
    random windows and on constant ones, where every position ties (an image's background)."""
    x = jax.random.normal(jax.random.key(0), shape)
    x = x.at[0].set(0.25)  # the first example's windows are all ties
    g = jax.random.normal(jax.random.key(1), jnp.max(x, axis=axes).shape)
    ours, ours_vjp = jax.vjp(lambda z: pooling.window_max(z, axes, one_pass=True), x)
    ref, ref_vjp = jax.vjp(lambda z: jnp.max(z, axis=axes), x)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(ours_vjp(g)[0], ref_vjp(g)[0], rtol=1e-6, atol=1e-7)


def test_window_max_one_pass_backward_never_divides_by_zero():
    """Where the backward's input differs from the forward's (a fusion rounding it differently),
    a window's maximum matches no position: that window passes no gradient, never inf or NaN."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4, 5))
    y = jnp.max(x, axis=3) + 1.0  # no position equals this "maximum"
    (grad,) = pooling._window_max_bwd((3,), (x, y), jnp.ones_like(y))
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("pool_backward, batch_norm, activation, dtype, one_pass", [
    ("one_pass", False, "relu", "float32", True),
    ("jax", False, "relu", "float32", False),  # not CPU: JAX's own gradient whatever the model
    ("one_pass", True, "relu", "float32", False),  # batch norm: not recomputed bit for bit
    ("one_pass", False, "tanh", "float32", False),
    ("one_pass", False, "relu", "bfloat16", False),
])
def test_stage_form_takes_the_one_pass_max_only_where_plan_and_input_allow(pool_backward, batch_norm, activation,
                                                                        dtype, one_pass):
    c = conv.Conv2d(3, 4, 3, rngs=nnx.Rngs(0), impl="patches", dtype=dtype)
    form = stage_form.stage_form(c, (8, 12, 12, 3), batch_norm=batch_norm, activation=activation, dropout=False,
                                 pool="max", pool_size=2, compute=layers.Compute("patches", dtype, pool_backward))
    assert form.one_pass_max == one_pass
    assert form.dead_after_pool == (activation == "relu")  # the 10x10 map is whole 2x2 windows


def test_stage_form_keeps_jaxs_max_gradient_after_a_winograd_layer():
    """A Winograd layer's output transform is a sum of products that XLA may fuse (and contract to
    multiply-adds) differently where the pool's backward recomputes it, so its stages keep JAX's
    max gradient; a layer of the same stage that falls back to patches keeps the one-pass one."""
    def form(in_channels):
        c = conv.Conv2d(in_channels, 8, 3, padding="SAME", rngs=nnx.Rngs(0), impl="winograd")
        return stage_form.stage_form(c, (8, 16, 16, in_channels), batch_norm=False, activation="relu",
                                     dropout=False, pool="max", pool_size=2,
                                     compute=layers.Compute("winograd", "float32", "one_pass"))
    assert not form(16).one_pass_max  # Winograd: 16 input channels on a 16x16 map
    assert form(3).one_pass_max  # an RGB layer: patches


def test_activations():
    x = jnp.asarray([-2.0, 0.5])
    exact_gelu = 0.5 * x * (1 + jax.scipy.special.erf(x / np.sqrt(2)))  # PyTorch's nn.GELU()
    np.testing.assert_allclose(layers.ACTIVATIONS["gelu"](x), exact_gelu, rtol=1e-6)  # elementwise
    np.testing.assert_allclose(layers.ACTIVATIONS["leaky_relu"](x), [-0.02, 0.5], rtol=1e-6)


# ----------------------------------------------------------------------------- validation


def _lenet():
    return load_config("lenet_tutorial").model


BAD_CONFIGS = [
    # (overrides, input shape, substring the message must contain)
    (dict(name="vgg"), CIFAR, "model.name='vgg'"),
    (dict(kernel_size=(5, 15)), CIFAR, "model.kernel_size[1]=15"),
    (dict(conv_features=(6, 16, 32), kernel_size=(5, 5, 7), strides=(1, 1, 1)), CIFAR,
     "model.kernel_size[2]=7"),
    (dict(conv_features=(6, 16, 32, 32, 32, 32), kernel_size=(3,) * 6, strides=(1,) * 6, padding="SAME"),
     CIFAR, "model.pool_size"),
    (dict(pool_size=40), CIFAR, "model.pool_size"),
    (dict(conv_features=(6, -16)), CIFAR, "model.conv_features[1]"),
    (dict(conv_features=(6, 16, 8)), CIFAR, "model.kernel_size"),
    (dict(strides=(1, 0)), CIFAR, "model.strides[1]"),
    (dict(dense_features=(120, 0)), CIFAR, "model.dense_features[1]"),
    (dict(activation="swish2"), CIFAR, "model.activation"),
    (dict(init="orthogonal"), CIFAR, "model.init"),
    (dict(pool="median"), CIFAR, "model.pool"),
    (dict(padding="FULL"), CIFAR, "model.padding"),
    (dict(dropout_placement="everywhere"), CIFAR, "model.dropout_placement"),
    (dict(dropout_rate=1.0), CIFAR, "model.dropout_rate"),
    (dict(dropout_rate=-0.1), CIFAR, "model.dropout_rate"),
    (dict(dropout_rate=0.5, dropout_placement="dense", dense_features=()), CIFAR, "model.dropout_placement"),
    (dict(bn_momentum=1.5), CIFAR, "model.bn_momentum"),
    (dict(conv_impl="cudnn"), CIFAR, "model.conv_impl"),
    (dict(pool_size=0), CIFAR, "model.pool_size"),
    (dict(name="mlp", dense_features=(512, -1)), CIFAR, "model.dense_features[1]"),
    (dict(name="mlp", dropout_rate=0.5, dropout_placement="conv"), CIFAR, "model.dropout_placement"),
    (dict(name="block_cnn", block_channels=(8, 8, 8, 8, 8, 8)), CIFAR, "model.block_channels"),
    (dict(name="block_cnn", block_channels=(8, -8)), CIFAR, "model.block_channels[1]"),
    (dict(name="block_cnn", num_branches=0), CIFAR, "model.num_branches"),
    (dict(name="block_cnn", gate="tanh"), CIFAR, "model.gate"),
    (dict(dropout_rate=0.5, dropout_placement="conv", dropout_kind="spatial"), CIFAR, "model.dropout_kind"),
    (dict(dropout_rate=0.5, dropout_placement="dense", dropout_kind="channel"), CIFAR, "model.dropout_kind"),
    (dict(name="block_cnn", classifier_features=(256, 0)), CIFAR, "model.classifier_features[1]"),
    (dict(name="resnet18", dropout_rate=0.2, dropout_placement="conv"), CIFAR, "model.dropout_placement"),
    (dict(), (32, 32), "input_shape"),
]


@pytest.mark.parametrize("overrides,shape,needle", BAD_CONFIGS, ids=[b[2] for b in BAD_CONFIGS])
def test_bad_config_raises_config_error(overrides, shape, needle):
    cfg = _lenet()
    with cfg.unlocked():
        for k, v in overrides.items():
            cfg[k] = v
    with pytest.raises(ConfigError) as info:
        validate_model_config(cfg, shape, 10)
    message = str(info.value)
    assert needle in message and "\n" not in message, message
    with pytest.raises(ConfigError):
        create_model(cfg, input_shape=shape, num_classes=10, rngs=nnx.Rngs(0))


def test_bad_num_classes_and_fashion_arch():
    with pytest.raises(ConfigError, match="num_classes"):
        validate_model_config(_lenet(), CIFAR, 0)
    with pytest.raises(ConfigError, match="fashion_mnist.py:vgg"):
        load_config("fashion_mnist", "vgg")


def test_kernel_error_message_is_actionable():
    cfg = _lenet()
    cfg.conv_features, cfg.kernel_size, cfg.strides = (6, 16, 32), (5, 5, 7), (1, 1, 1)
    with pytest.raises(ConfigError) as info:  # 32 -conv5-> 28 -pool-> 14 -conv5-> 10 -pool-> 5
        validate_model_config(cfg, CIFAR, 10)
    assert str(info.value) == ("model.kernel_size[2]=7 is larger than the 5x5 feature map reaching "
                               "conv stage 3; use a smaller kernel, padding='SAME' or fewer pooling stages")


def test_study_configs_load_and_validate():
    for name in ("lenet_tutorial", "three_layer_cnn", "cnn_bn_dropout", "mlp", "block_cnn"):
        cfg = load_config(name)
        validate_model_config(cfg.model, CIFAR, 10)
    lenet = load_config("lenet_tutorial")
    assert (lenet.batch_size, lenet.num_epochs, lenet.optim.name) == (4, 2, "sgd")
    assert (lenet.optim.learning_rate, lenet.optim.momentum, lenet.data.val_size) == (1e-3, 0.9, 10000)
    for arch in ("conv_conv_fc", "conv_fc_fc", "fc_fc_fc", "conv_conv_conv", "resnet18"):
        cfg = load_config("fashion_mnist", arch)
        assert cfg.data.name == "fashion_mnist"
        validate_model_config(cfg.model, FASHION, 10)


def test_relu_sows_dead_channels_only_inside_capture():
    """A channel that is zero for the whole batch counts as dead; the training step collects the
    fraction with `nnx.capture`, and a plain call (evaluation) leaves the module unchanged."""

    class Probe(nnx.Module):
        def __call__(self, x):
            return layers.activate(self, "relu", x)

    x = jnp.stack([jnp.array([1.0, -1.0, -2.0, 3.0]), jnp.array([2.0, -3.0, 1.0, -1.0])])  # channel 1 dead
    probe = Probe()
    _, intermediates = nnx.capture(probe, nnx.Intermediate)(x)
    np.testing.assert_allclose(metrics.dead_unit_fraction(metrics.dead_channels(intermediates)), 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe(x)
    assert not jax.tree.leaves(nnx.state(probe, nnx.Intermediate))


@pytest.mark.parametrize("conv_impl,image_size", [("patches", 12), ("xla", 12), ("xla", 13)])
def test_conv_stage_dead_fraction_equals_the_full_maps(conv_impl, image_size):
    """Under max pooling the stage counts dead channels on the pooled map (cheaper) when the pool
    covers the whole map: a channel is zero everywhere iff its pooled maxima are. The count must
    equal the full-resolution one, for the pool-window path, the reshape pool and an odd map
    (floor mode drops a row and a column: counted before the pool)."""
    from cifar_jax.models.cnn import ConvStage

    stage = ConvStage(3, 8, 3, 1, padding="VALID", batch_norm=False, bn_momentum=0.9, activation="relu",
                      dropout=None, pool="max", pool_size=2, init="torch_default",
                      compute=layers.Compute(conv_impl), rngs=nnx.Rngs(0))
    stage.conv.bias[...] = jnp.array([-50.0, 0.0, -50.0, 0.0, 0.0, -50.0, 0.0, -5.0])  # 3 of 8 dead
    # Channel 7 (all-positive weights) fires only where an input row of 40s enters its window:
    # the last conv row, which a 2x2 floor-mode pool of the odd map drops.
    stage.conv.kernel[...] = stage.conv.kernel[...].at[..., 7].set(0.1)
    x = jax.random.uniform(jax.random.key(1), (4, image_size, image_size, 3)).at[:, -1].set(40.0)
    _, intermediates = nnx.capture(stage, nnx.Intermediate)(x)
    full_map_dead = jnp.all(jax.nn.relu(stage.conv(x)) <= 0, axis=(0, 1, 2))
    np.testing.assert_array_equal(full_map_dead, [True, False, True, False, False, True, False, False])
    np.testing.assert_array_equal(metrics.dead_channels(intermediates), [full_map_dead])
