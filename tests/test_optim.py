"""Optimizer chains against PyTorch's update rules (hand-written in numpy), schedules, losses."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.core import losses
from cifar_jax.core import optim
from cifar_jax.core import runs
from cifar_jax.errors import ConfigError
from configs import default


def get_config():
    return default.get_config()


SPE, EPOCHS = 4, 2  # schedule length for the parity runs (constant schedule: irrelevant)
STEPS = 6


def optim_config(**overrides):
    cfg = get_config().optim
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def hparams(lr, wd=0.0, momentum=0.0):
    return {
        "learning_rate": jnp.float32(lr),
        "weight_decay": jnp.float32(wd),
        "momentum": jnp.float32(momentum),
    }


def initial_params():
    rng = np.random.default_rng(0)
    return {
        "dense": {
            "kernel": rng.normal(size=(3, 2)).astype(np.float32),
            "bias": rng.normal(size=(2,)).astype(np.float32),
        },
        "scale": rng.normal(size=(2,)).astype(np.float32) + 1.0,
    }


_G = np.random.default_rng(1)
GRAD_NOISE = [
    jax.tree.map(lambda p: _G.normal(size=p.shape).astype(np.float32), initial_params())
    for _ in range(STEPS)
]


def grad_fn(params, t, scale=1.0):
    """A parameter-dependent gradient (same rule for numpy and JAX)."""
    return jax.tree.map(lambda p, n: scale * (n + 0.5 * p * p), params, GRAD_NOISE[t])


def run_optax(cfg, hp, steps=STEPS, scale=1.0):
    tx = optim.make_optimizer(cfg, hp, steps_per_epoch=SPE, num_epochs=EPOCHS)
    params = jax.tree.map(jnp.asarray, initial_params())
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    for t in range(steps):
        params, state = step(params, state, grad_fn(params, t, scale))
    return jax.tree.map(np.asarray, params)


def run_numpy(update_rule, steps=STEPS, scale=1.0):
    """`update_rule(p, g, state, t)` per leaf, float64; returns the final params."""
    params = jax.tree.map(lambda p: p.astype(np.float64), initial_params())
    leaves, treedef = jax.tree.flatten(params)
    states = [dict() for _ in leaves]
    for t in range(steps):
        grads = jax.tree.leaves(grad_fn(treedef.unflatten(leaves), t, scale))
        leaves = [update_rule(p, g, s, t + 1) for p, g, s in zip(leaves, grads, states)]
    return treedef.unflatten(leaves)


# ---- PyTorch's rules, transcribed from torch/optim/{sgd,adam,adamw,rmsprop}.py (single tensor).


def torch_sgd(lr, momentum, wd, nesterov=False):
    def rule(p, g, s, t):
        g = g + wd * p
        if momentum:
            s["buf"] = g.copy() if t == 1 else momentum * s["buf"] + g
            g = g + momentum * s["buf"] if nesterov else s["buf"]
        return p - lr * g

    return rule


def torch_adam(lr, wd, b1=0.9, b2=0.999, eps=1e-8, decoupled=False):
    def rule(p, g, s, t):
        if decoupled:  # AdamW
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        step_size = lr / (1 - b1**t)
        denom = np.sqrt(s["v"]) / np.sqrt(1 - b2**t) + eps
        return p - step_size * s["m"] / denom

    return rule


def torch_rmsprop(lr, wd, momentum, alpha=0.99, eps=1e-8):
    def rule(p, g, s, t):
        g = g + wd * p
        s["sq"] = alpha * s.get("sq", 0.0) + (1 - alpha) * g * g
        avg = np.sqrt(s["sq"]) + eps
        if momentum:
            s["buf"] = momentum * s.get("buf", 0.0) + g / avg
            return p - lr * s["buf"]
        return p - lr * g / avg

    return rule


def assert_tree_close(actual, expected, rtol=2e-5, atol=1e-6):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), actual, expected
    )


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_coupled_weight_decay_matches_torch(nesterov):
    cfg = optim_config(name="sgd", nesterov=nesterov)
    got = run_optax(cfg, hparams(0.05, wd=0.01, momentum=0.9))
    assert_tree_close(got, run_numpy(torch_sgd(0.05, 0.9, 0.01, nesterov)))


def test_sgd_zero_momentum_is_plain_sgd():
    got = run_optax(optim_config(name="sgd"), hparams(0.1, momentum=0.0))
    assert_tree_close(got, run_numpy(torch_sgd(0.1, 0.0, 0.0)))


def test_adam_coupled_l2_matches_torch():
    cfg = optim_config(name="adam", weight_decay_mode="coupled")
    got = run_optax(cfg, hparams(1e-2, wd=0.1))
    assert_tree_close(got, run_numpy(torch_adam(1e-2, 0.1)))
    # ... and differs from the decoupled rule, so the test can tell them apart.
    assert not np.allclose(
        got["dense"]["kernel"], run_numpy(torch_adam(1e-2, 0.1, decoupled=True))["dense"]["kernel"]
    )


@pytest.mark.parametrize(
    "overrides", [dict(name="adamw"), dict(name="adam", weight_decay_mode="decoupled")]
)
def test_decoupled_weight_decay_matches_torch_adamw(overrides):
    got = run_optax(optim_config(**overrides), hparams(1e-2, wd=0.1))
    assert_tree_close(got, run_numpy(torch_adam(1e-2, 0.1, decoupled=True)))


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_rmsprop_matches_torch(momentum):
    got = run_optax(optim_config(name="rmsprop"), hparams(1e-2, wd=0.01, momentum=momentum))
    assert_tree_close(got, run_numpy(torch_rmsprop(1e-2, 0.01, momentum)), rtol=1e-4)


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_eps_placement_matches_torch(name):
    # Gradients ~1e-7 make sqrt(v) comparable to eps = 1e-8, so eps inside the square root
    # (optax.rmsprop's default) or before Adam's bias correction would be off by far more than
    # the tolerance.
    rule = torch_adam(1e-3, 0.0) if name == "adam" else torch_rmsprop(1e-3, 0.0, 0.0)
    got = run_optax(optim_config(name=name), hparams(1e-3), scale=1e-7)
    assert_tree_close(got, run_numpy(rule, scale=1e-7), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_kernel_mask_leaves_biases_and_scales_undecayed(mode):
    cfg = optim_config(name="sgd", weight_decay_mode=mode, decay_kernels_only=True)
    tx = optim.make_optimizer(cfg, hparams(0.1, wd=0.5), steps_per_epoch=SPE, num_epochs=EPOCHS)
    params = jax.tree.map(jnp.asarray, initial_params())
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(
        updates["dense"]["kernel"], -0.1 * 0.5 * params["dense"]["kernel"], rtol=1e-6
    )
    assert not np.any(updates["dense"]["bias"]) and not np.any(updates["scale"])
    # Without the mask every parameter is decayed.
    cfg.decay_kernels_only = False
    tx = optim.make_optimizer(cfg, hparams(0.1, wd=0.5), steps_per_epoch=SPE, num_epochs=EPOCHS)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["scale"], -0.05 * params["scale"], rtol=1e-6)


def test_vmap_over_hyperparameters_equals_separate_runs():
    cfg = optim_config(name="sgd", schedule="warmup_cosine", warmup_epochs=0.5)
    params0 = jax.tree.map(jnp.asarray, initial_params())
    noise = jax.tree.map(lambda *n: jnp.stack(n), *GRAD_NOISE)

    def train(hp):
        tx = optim.make_optimizer(cfg, hp, steps_per_epoch=SPE, num_epochs=EPOCHS)

        def step(carry, n):
            params, state = carry
            grads = jax.tree.map(lambda p, e: e + 0.5 * p * p, params, n)
            updates, state = tx.update(grads, state, params)
            return (jax.tree.map(jnp.add, params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params0, tx.init(params0)), noise)
        return params

    grid = {
        "learning_rate": jnp.array([0.01, 0.05, 0.1]),
        "weight_decay": jnp.array([0.0, 1e-2, 1e-1]),
        "momentum": jnp.array([0.0, 0.5, 0.9]),
    }
    together = jax.jit(jax.vmap(train))(grid)
    single = jax.jit(train)
    for i in range(3):
        alone = single(jax.tree.map(lambda v: v[i], grid))
        # elementwise optimizer updates (no sums): vmapped and alone round identically up to ulps
        assert_tree_close(jax.tree.map(lambda v: v[i], together), alone, rtol=1e-6)
    kernels = np.asarray(together["dense"]["kernel"])
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])


def test_state_structure_does_not_depend_on_hyperparameter_values():
    params = initial_params()
    for name in optim.OPTIMIZERS:
        cfg = optim_config(name=name)
        structures = {
            jax.tree.structure(
                optim.make_optimizer(
                    cfg, hparams(0.1, wd=wd, momentum=m), steps_per_epoch=SPE, num_epochs=EPOCHS
                ).init(params)
            )
            for wd, m in [(0.0, 0.0), (0.1, 0.9)]
        }
        assert len(structures) == 1, name


def test_clipping_bounds_the_update_norm():
    cfg = optim_config(name="sgd", grad_clip_norm=1.0)
    tx = optim.make_optimizer(cfg, hparams(1.0), steps_per_epoch=SPE, num_epochs=EPOCHS)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    state = tx.init(params)
    big = {"a": jnp.full(3, 5.0), "b": jnp.full((2, 2), -5.0)}
    updates, _ = tx.update(big, state, params)
    norm = float(optax_global_norm(updates))
    assert norm == pytest.approx(1.0, rel=1e-5)
    small = jax.tree.map(lambda g: g / 100, big)  # norm 0.19: untouched
    updates, _ = tx.update(small, state, params)
    assert_tree_close(updates, jax.tree.map(jnp.negative, small))


def optax_global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))


# ---- Schedules.


def schedule(name, spe=10, epochs=50, **overrides):
    cfg = optim_config(schedule=name, **overrides)
    return optim.make_schedule(cfg, steps_per_epoch=spe, num_epochs=epochs)


def test_warmup_cosine_hits_documented_values():
    # The block-model study: 5 warmup epochs of 50, per step.
    s = schedule("warmup_cosine", warmup_epochs=5.0)
    warmup, total = 50, 500
    assert float(s(0)) == 0.0
    assert float(s(25)) == pytest.approx(0.5)
    assert float(s(warmup)) == pytest.approx(1.0)
    assert float(s(warmup + (total - warmup) // 2)) == pytest.approx(0.5, abs=1e-6)
    assert float(s(total)) == pytest.approx(0.0, abs=1e-7)
    assert float(s(total - 1)) < 1e-4


def test_learning_rate_is_base_times_schedule():
    cfg = optim_config(name="sgd", schedule="warmup_cosine", warmup_epochs=1.0)
    tx = optim.make_optimizer(cfg, hparams(0.3), steps_per_epoch=4, num_epochs=3)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    shape = optim.make_schedule(cfg, steps_per_epoch=4, num_epochs=3)
    for step in range(12):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        assert float(updates["w"]) == pytest.approx(-0.3 * float(shape(step)), abs=1e-7)


def test_step_schedule_boundaries():
    s = schedule("step", spe=10, epochs=10, step_epochs=(3, 6), step_factor=0.1)
    assert [float(s(t)) for t in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    s = schedule("step", spe=10, epochs=10, step_epochs=(3,), step_factor=0.5, warmup_epochs=1.0)
    assert [float(s(t)) for t in (0, 5, 10, 29, 30)] == pytest.approx([0, 0.5, 1, 1, 0.5])


def test_other_schedules():
    s = schedule("constant", epochs=2)
    assert [float(s(t)) for t in (0, 19, 100)] == [1.0, 1.0, 1.0]
    s = schedule("linear", epochs=2)
    assert [float(s(t)) for t in (0, 10, 20)] == pytest.approx([1.0, 0.5, 0.0])
    s = schedule("one_cycle", epochs=10)
    assert float(s(0)) == pytest.approx(1 / 25)
    assert float(s(30)) == pytest.approx(1.0)
    assert float(s(100)) == pytest.approx(1 / 25 / 1e4)
    s = schedule("one_cycle", epochs=10, warmup_epochs=2.0)  # peak at the end of the warmup
    assert float(s(20)) == pytest.approx(1.0) and float(s(19)) < 1.0 and float(s(21)) < 1.0


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(name="lamb"), "optim.name"),
        (dict(weight_decay_mode="l2"), "optim.weight_decay_mode"),
        (dict(schedule="poly"), "optim.schedule"),
        (dict(name="adam", nesterov=True), "optim.nesterov"),
        (dict(warmup_epochs=2.0), "optim.warmup_epochs"),
        (dict(grad_clip_norm=-1.0), "optim.grad_clip_norm"),
        (dict(schedule="step", step_epochs=(3, 2)), "optim.step_epochs"),
        (dict(schedule="step", step_factor=0.0), "optim.step_factor"),
    ],
)
def test_bad_static_config_raises_config_error(overrides, field):
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.") + "="):
        optim.make_optimizer(optim_config(**overrides), steps_per_epoch=10, num_epochs=2)


def test_traced_values_are_validated_by_field():
    config = get_config()
    config.optim.label_smoothing = 0.1
    config.augment.mixup_alpha = 0.2
    hp = runs.traced_values(config)
    assert hp == {
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "label_smoothing": 0.1,
        "mixup_alpha": 0.2,
        "dropout_rate": 0.0,
    }
    for section, field, value in [
        ("optim", "learning_rate", 0.0),
        ("optim", "momentum", 1.0),
        ("optim", "weight_decay", -1.0),
        ("optim", "label_smoothing", 1.0),
        ("augment", "mixup_alpha", -0.5),
    ]:
        bad = get_config()
        setattr(bad[section], field, value)
        with pytest.raises(ConfigError, match=f"^{section}.{field}="):
            runs.traced_values(bad)


def test_hparams_fall_back_to_config_values():
    cfg = optim_config(name="sgd", learning_rate=0.2, momentum=0.0)
    tx = optim.make_optimizer(cfg, steps_per_epoch=SPE, num_epochs=EPOCHS)
    params = {"w": jnp.zeros(2)}
    updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.2)


# ---- Losses.


def test_label_smoothing_matches_torch_cross_entropy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    one_hot = np.eye(4, dtype=np.float32)[labels]
    s = 0.1
    smoothed = np.asarray(losses.smooth_labels(one_hot, s))
    np.testing.assert_allclose(smoothed, one_hot * 0.9 + 0.025, rtol=1e-6)
    np.testing.assert_allclose(smoothed.sum(-1), 1.0, rtol=1e-6)
    # torch.nn.CrossEntropyLoss(label_smoothing=s, reduction="none"):
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    torch_loss = (1 - s) * -logp[np.arange(5), labels] + s * -logp.mean(-1)
    got = jax.jit(lambda lg, t, s: losses.softmax_cross_entropy(lg, losses.smooth_labels(t, s)))(
        logits, one_hot, jnp.float32(s)
    )
    np.testing.assert_allclose(got, torch_loss, rtol=1e-5)
    # No smoothing: plain cross entropy.
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, one_hot), -logp[np.arange(5), labels], rtol=1e-5
    )
