"""The fast paths of cifar_jax.core.execution give the plain path's results: scanned step chunks vs one
step per call, image patches (with space-to-depth blocks) vs XLA convolutions, runs mapped in
groups vs one vmap; plus the per-backend rules and the persistent compilation cache.

Fast on a 2-core CPU: tiny models and synthetic data (tests/helpers.py), few compiled programs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cifar_jax import config_paths
from cifar_jax.core import execution
from cifar_jax.job import train
from cifar_jax.job import program as program_lib
from cifar_jax.errors import ConfigError
from cifar_jax.models import conv, patches
from helpers import assert_close_reassociated, synthetic_splits, tiny_config, train_runs

# ----------------------------------------------------------------------------- rules


def test_chunk_length_divides_the_epoch_when_it_can():
    assert execution.chunk_length(312, 10) == 8  # 312 = 39 x 8: one compiled chunk length
    assert execution.chunk_length(10000, 10) == 10
    assert execution.chunk_length(311, 10) == 10  # prime: a remainder chunk compiles once more
    assert execution.chunk_length(3, 10) == 3
    assert execution.chunk_length(1, 10) == 1


def plan_for(config, backend: str, steps_per_epoch: int = 312, step_bytes: int = 21 * 2**20):
    return execution.plan(config, steps_per_epoch=steps_per_epoch, backend=backend, step_bytes=lambda _: step_bytes)


def test_plan_rules_per_backend():
    config = tiny_config()
    cpu, gpu = plan_for(config, "cpu"), plan_for(config, "gpu")
    assert (cpu.conv_impl, cpu.compute_dtype, cpu.steps_per_call) == ("winograd", "float32", 8)  # 312 = 39 x 8
    # one probe step, then job/chunks.py sizes calls to take CHUNK_SECONDS
    assert (gpu.conv_impl, gpu.compute_dtype, gpu.steps_per_call, gpu.runs_per_group) == ("xla", "bfloat16", 1, None)
    assert gpu.chunk_seconds == execution.CHUNK_SECONDS and gpu.policy == "accelerator"
    config.execution.policy = "accelerator"  # the accelerator's choices on a CPU
    assert plan_for(config, "cpu").conv_impl == "xla" and plan_for(config, "cpu").policy == "accelerator"
    config.execution.policy = "auto"
    # The max pool's one-pass backward rests on XLA:CPU's bit-exact recomputation: CPU only.
    assert (cpu.compute.pool_backward, gpu.compute.pool_backward) == ("one_pass", "jax")
    config.model.conv_impl = "xla"  # XLA:CPU convolutions are slow inside loop bodies
    assert plan_for(config, "cpu").steps_per_call == 1
    config.execution.steps_per_call = 7
    assert plan_for(config, "cpu", steps_per_epoch=100).steps_per_call == 7
    assert plan_for(config, "cpu", steps_per_epoch=100).chunk_seconds is None  # asked for: a fixed length
    assert plan_for(config, "tpu", steps_per_epoch=5).steps_per_call == 5
    config.execution.compute_dtype = "float32"
    assert plan_for(config, "gpu").compute_dtype == "float32"


def test_runs_per_group_rules():
    config = tiny_config()
    mib = 2**20
    assert plan_for(config, "cpu", step_bytes=1.04 * mib).runs_per_group == 11  # LeNet, batch 4
    assert plan_for(config, "cpu", step_bytes=21 * mib).runs_per_group == 1  # LeNet, batch 128
    assert plan_for(config, "cpu", step_bytes=414 * mib).runs_per_group == 1  # fifth study's CNN
    assert plan_for(config, "tpu", step_bytes=414 * mib).runs_per_group is None  # all runs in one vmap

    def weighed(param_bytes):
        return execution.plan(config, steps_per_epoch=100, backend="cpu", step_bytes=lambda _: 2.5 * mib,
                              param_bytes=lambda _: param_bytes).runs_per_group
    assert weighed(6 * mib) is None  # 004's MLP: weight-bound, all runs in one vmap
    assert weighed(0.2 * mib) == 4  # the same activations with LeNet's parameters: the cache budget
    config.execution.runs_per_group = 3
    assert plan_for(config, "cpu", step_bytes=414 * mib).runs_per_group == 3


def test_microbatch_rules():
    """On CPU a separable model's batch is cut into the fewest equal slices whose activations fit
    the cache budget (a divisor of the batch size); never with batch norm or dropout, never on
    accelerators; a requested count is checked."""
    config = tiny_config(batch_size=128)
    mib = 2**20

    def plan(backend="cpu", step_bytes=21 * mib, separable=True):
        return execution.plan(config, steps_per_epoch=100, backend=backend, step_bytes=lambda _: step_bytes,
                              batch_separable=lambda _: separable)
    assert (plan().microbatches, plan().runs_per_group) == (2, 1)  # LeNet, batch 128: 2 x 10.5 MiB
    assert plan(step_bytes=30 * mib).microbatches == 4  # 3 slices would fit, but 3 does not divide 128
    assert plan(step_bytes=1.04 * mib).microbatches == 1 and plan(step_bytes=1.04 * mib).runs_per_group == 11
    assert plan(separable=False).microbatches == 1
    assert plan("gpu").microbatches == 1
    config.execution.microbatches = 8
    assert plan("gpu").microbatches == 8
    config.execution.microbatches = 3
    with pytest.raises(ConfigError, match="execution.microbatches=3 must divide batch_size=128"):
        plan()
    config.execution.microbatches = 2
    with pytest.raises(ConfigError, match="needs a model whose examples never interact"):
        plan(separable=False)


@pytest.mark.parametrize("overrides, separable", [
    ({"model.dropout_rate": 0.0}, True),
    ({"model.dropout_rate": 0.2}, False),  # a random stream advanced per call
    ({"model.dropout_rate": 0.0, "model.conv_batch_norm": True}, False),  # statistics of the batch
])
def test_batch_separable_means_no_state_besides_parameters(overrides, separable):
    config = tiny_config(**overrides)
    build = program_lib._model_builder(config, (12, 12, 1), 10, plan_for(config, "cpu"))
    assert execution.batch_separable(build) is separable


@pytest.mark.parametrize("overrides", [
    {"num_seeds": 2},  # every run on its own stream
    {"hparam_grid": {"learning_rate": (0.05, 0.1)}},  # a stream's shared batch, runs vmapped
    {"hparam_grid": {"learning_rate": (0.05, 0.1, 0.2)}, "execution.runs_per_group": 1},  # ... runs in turn
    {"hparam_grid": {"label_smoothing": (0.0, 0.1)}, "augment.crop_padding": 2},  # a batch per run
])
def test_microbatched_training_equals_the_whole_batch(overrides):
    """Gradients summed over 2 or 4 slices of the batch give the whole batch's training: after an
    epoch, parameters and sums within float tolerance and the same dead-ReLU fractions (a channel
    dead on the batch is dead on every slice)."""
    splits = synthetic_splits()
    results = {}
    for microbatches in (1, 2, 4):
        config = tiny_config(**{"model.dropout_rate": 0.0, "batch_size": 16, "execution.microbatches": microbatches,
                                **overrides})
        setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train)
        assert setup.program.plan.microbatches == microbatches
        state, sums, _ = train.train_epoch(setup.program, setup.state, setup.hparams, *splits.train, 1)
        results[microbatches] = (state.params, sums)
    params, sums = results[1]
    assert np.asarray(sums.dead_fraction).max() > 0  # the check below compares something
    for microbatches in (2, 4):
        other_params, other_sums = results[microbatches]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), params, other_params)
        np.testing.assert_allclose(other_sums.loss, sums.loss, rtol=1e-5)
        np.testing.assert_array_equal(other_sums.correct, sums.correct)
        np.testing.assert_array_equal(other_sums.dead_fraction, sums.dead_fraction)


@pytest.mark.parametrize("field, value", [("execution.steps_per_call", -1), ("execution.runs_per_group", -2),
                                          ("execution.microbatches", -1),
                                          ("execution.compute_dtype", "float16"), ("model.conv_impl", "cudnn")])
def test_bad_execution_fields_are_refused_by_name(field, value):
    config = tiny_config()
    config_paths.assign(config, field, value)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        execution.validate(config)


def test_residual_bytes_counts_what_the_backward_pass_keeps():
    w = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    x = jax.ShapeDtypeStruct((128, 64), jnp.float32)
    linear = execution.residual_bytes(lambda w, x: jnp.sum(x @ w), w, x)
    assert linear >= 128 * 64 * 4  # x is kept for the weight gradient
    deeper = execution.residual_bytes(lambda w, x: jnp.sum(jnp.tanh(x @ w) @ w.T), w, x)
    assert deeper > linear  # and the hidden activations


def test_program_sizes_run_groups_from_its_step_activations():
    """The auto rule on CPU: LeNet keeps ~1 MiB per run at batch 4 (about 11 runs share a step)
    and ~21 MiB at batch 128, the fifth study's CNN ~414 MiB: one run per step."""
    from configs import cnn_bn_dropout, lenet_tutorial
    groups = {}
    for name, module, batch in [("lenet4", lenet_tutorial, 4), ("lenet128", lenet_tutorial, 128),
                                ("cnn", cnn_bn_dropout, 128)]:
        config = module.get_config()
        config.batch_size = batch
        groups[name] = program_lib.make_train(config, (32, 32, 3), 10, num_train=1024, backend="cpu").plan.runs_per_group
    assert 8 <= groups["lenet4"] <= 16  # 12 MiB / 0.75-1.5 MiB
    assert groups["lenet128"] == groups["cnn"] == 1
    config.execution.runs_per_group = -1  # refused by the job's validation pass, before any program is built
    with pytest.raises(ConfigError, match="runs_per_group"):
        program_lib.setup_runs(config, (32, 32, 3), 10, num_train=1024, abstract=True)


# ----------------------------------------------------------------------------- equivalences


def test_map_over_runs_equals_vmap():
    """Groups of 1, 2 and 3 (a remainder group) of 5 runs, with shared and per-run arguments and
    pytree outputs, give exactly what one vmap gives."""
    rng = np.random.default_rng(0)
    w = {"a": jnp.asarray(rng.normal(size=(5, 3, 4)), jnp.float32), "b": jnp.arange(5.0)}
    x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)  # shared by all runs

    def fn(w, x, scale):
        y = jnp.tanh(x @ w["a"]) * scale + w["b"]
        return {"y": y, "s": y.sum()}

    scale = jnp.linspace(0.5, 1.5, 5)

    @jax.jit
    def all_groups(w, x, scale):
        return [execution.map_over_runs(fn, (0, None, 0), g)(w, x, scale) for g in (None, 1, 2, 3, 5)]

    ref, *others = all_groups(w, x, scale)
    for other in others:
        jax.tree.map(assert_close_reassociated, ref, other)  # vmap vs lax.map: sums may be ordered differently
    with pytest.raises(ValueError, match="in_axes"):
        execution.map_over_runs(fn, (1, None, 0), 2)


CONV_CASES = [  # (h, w, k, c_in, c_out, padding, space-to-depth factors to compare)
    (32, 32, 5, 3, 6, "VALID", (4,)),  # LeNet conv1 (auto picks 2; 4 has 2x2 taps)
    (14, 14, 5, 6, 16, "VALID", (2,)),  # LeNet conv2
    (9, 8, 4, 2, 5, "SAME", (3,)),  # even kernel, asymmetric padding, non-square
    (11, 7, 3, 2, 4, 1, (2,)),  # PyTorch padding=1, output not a multiple of the block
]


def test_space_to_depth_patches_equal_xla_convolution():
    """Outputs and gradients (kernel and input) of `conv_patches` at several block factors equal
    XLA's convolution; all cases in one compiled program."""
    rng = np.random.default_rng(1)
    cases = []
    for h, w, k, c, o, padding, factors in CONV_CASES:
        x = jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(k, k, c, o)) / np.sqrt(k * k * c), jnp.float32)
        pads = conv.explicit_padding(padding, (h, w), (k, k), (1, 1))
        cases.append((x, kernel, pads, factors))

    def xla_conv(x, kernel, pads):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision="highest")

    def outputs_and_grads(conv, x, kernel):
        """(y, (d sum(sin y) / d kernel, d sum(sin y) / d x))"""
        def loss(kernel, x):
            y = conv(x, kernel)
            return jnp.sum(jnp.sin(y)), y
        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(kernel, x)
        return y, grads

    @jax.jit
    def run(arrays):
        out = []
        for (x, kernel), (_, _, pads, factors) in zip(arrays, cases):
            ref = outputs_and_grads(lambda x, k: xla_conv(x, k, pads), x, kernel)
            got = [outputs_and_grads(lambda x, k, f=f: patches.conv_patches(x, k, (1, 1), pads, f), x, kernel)
                   for f in factors]
            out.append((ref, got))
        return out

    for (ref, got), case in zip(run([(x, k) for x, k, _, _ in cases]), CONV_CASES):
        for result, f in zip(got, case[-1]):
            assert result[0].shape == ref[0].shape, (case, f)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"{case} f={f}"),
                         result, ref)


def test_space_to_depth_factor_choices():
    # LeNet on CIFAR: both convolutions use 2x2 blocks; 3x3 SAME convolutions (the fifth study's
    # CNN) and strided ones use plain patches.
    assert patches.space_to_depth_factor((5, 5), 3, 6, (28, 28), (1, 1), batch=128) == 2
    assert patches.space_to_depth_factor((5, 5), 6, 16, (10, 10), (1, 1), batch=128) == 2
    assert patches.space_to_depth_factor((3, 3), 64, 128, (16, 16), (1, 1), batch=100) == 1
    assert patches.space_to_depth_factor((3, 3), 3, 64, (16, 16), (2, 2), batch=100) == 1


def test_fast_training_paths_equal_the_plain_path():
    """One epoch of 16 steps (3 seeds, dropout, SGD with momentum): scanned chunks (auto on CPU:
    2 calls of 8 steps) with patch convolutions and the runs mapped in groups of 2 (a group and a
    remainder) equal one XLA-convolution step per call with all runs in one vmap."""
    splits = synthetic_splits(num_train=128, num_eval=64)
    results = {}
    for name, steps_per_call, impl, group in [("plain", 1, "xla", 3), ("fast", 0, "patches", 2)]:
        config = tiny_config(num_seeds=3)
        config.execution.steps_per_call = steps_per_call
        config.execution.runs_per_group = group
        config.model.conv_impl = impl
        results[name] = train_runs(config, splits, epochs=1)
    plain_state, plain_eval = results["plain"]
    state, evaluation = results["fast"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), state.params,
                 plain_state.params)
    np.testing.assert_allclose(evaluation["loss"], plain_eval["loss"], rtol=1e-4)
    np.testing.assert_array_equal(state.step, plain_state.step)


def test_training_through_a_winograd_layer_equals_xla_convolutions():
    """One epoch of 8 steps (3 seeds, dropout, scanned chunks, runs in groups of 2) of a CNN whose
    second layer takes Winograd on CPU (16 -> 16 channels, 3x3, on the 12x12 map) ends at XLA's
    convolution training's parameters within float tolerance: the form changes rounding only."""
    from cifar_jax.models import winograd

    assert winograd.applies((3, 3), (1, 1), 16, (12, 12), "float32")
    splits = synthetic_splits(num_train=64, num_eval=64)
    results = {}
    for impl, steps_per_call, group in [("xla", 1, 3), ("winograd", 0, 2)]:
        config = tiny_config(num_seeds=3, **{"model.conv_features": (16, 16), "model.kernel_size": (3, 3),
                                             "model.strides": (1, 1), "model.pool": "none"})
        config.execution.steps_per_call = steps_per_call
        config.execution.runs_per_group = group
        config.model.conv_impl = impl
        results[impl] = train_runs(config, splits, epochs=1)
    (xla_state, xla_eval), (state, evaluation) = results["xla"], results["winograd"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), state.params,
                 xla_state.params)
    np.testing.assert_allclose(evaluation["loss"], xla_eval["loss"], rtol=1e-4)


# ----------------------------------------------------------------------------- compilation cache


@pytest.fixture
def restore_cache_config():
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in before.items():
        jax.config.update(name, value)


def test_enable_compilation_cache(tmp_path, monkeypatch, restore_cache_config):
    target = tmp_path / "cache"
    monkeypatch.setenv("CIFAR_JAX_CACHE_DIR", str(target))
    assert execution.enable_compilation_cache() == str(target)
    assert jax.config.jax_compilation_cache_dir == str(target)
    assert jax.config.jax_persistent_cache_min_compile_time_secs <= 0.5
    assert (target.stat().st_mode & 0o777) == 0o700

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("CIFAR_JAX_CACHE_DIR", str(blocked / "cache"))
    workdir = tmp_path / "run"
    assert execution.enable_compilation_cache(str(workdir)) == str(workdir / "jax_cache")

    monkeypatch.setenv("CIFAR_JAX_CACHE_DIR", "off")
    assert execution.enable_compilation_cache(str(workdir)) is None


def test_bfloat16_compute_keeps_float32_state_and_close_outputs():
    """Mixed precision (auto on GPU/TPU, chosen here explicitly): convolutions and dense layers
    compute in bfloat16; parameters, batch statistics and the loss stay float32. The same
    initial weights give a validation loss within bfloat16's ~3 significant digits of float32's,
    and an epoch of bfloat16 training stays finite."""
    splits = synthetic_splits(num_train=128, num_eval=64)
    initial_loss = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(num_seeds=2)
        config.model.conv_batch_norm = True
        config.execution.compute_dtype = dtype
        initial_loss[dtype] = train_runs(config, splits, epochs=0)[1]["loss"]
    state, trained = train_runs(config, splits, epochs=1)  # bfloat16
    assert not np.array_equal(initial_loss["bfloat16"], initial_loss["float32"])  # bfloat16 really ran
    np.testing.assert_allclose(initial_loss["bfloat16"], initial_loss["float32"], rtol=0.01)
    assert np.all(np.isfinite(trained["loss"]))
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    batch_stats = jax.tree.leaves(nnx.state(state.model_state, nnx.BatchStat))
    assert batch_stats and {leaf.dtype for leaf in batch_stats} == {jnp.dtype(jnp.float32)}

