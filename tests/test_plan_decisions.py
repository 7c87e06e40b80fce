"""Precision decisions of the execution plan, and the resolved plan in a run's files."""

import json
import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cifar_jax.core import execution
from cifar_jax.errors import CheckpointError
from cifar_jax.job import train
from cifar_jax.job import program as program_lib
from cifar_jax.models.layers import Dropout
from configs import test as test_config
from helpers import needs_fashion_mnist, synthetic_splits, tiny_config


def lowered_eval_step(**overrides) -> str:
    splits = synthetic_splits()
    setup = program_lib.setup_runs(tiny_config(**overrides), splits.image_shape, 10, splits.num_train, abstract=True)
    program = setup.program
    state, hparams = setup.state, setup.hparams
    return program.eval_batch.lower(state, hparams, *splits.eval["val"], jnp.ones((2, 128))).as_text()


def test_float32_on_an_accelerator_means_highest_matmul_precision_and_cpu_keeps_the_default():
    accelerator = lowered_eval_step(**{"execution.policy": "accelerator", "execution.compute_dtype": "float32"})
    cpu = lowered_eval_step()
    assert "HIGHEST" in accelerator and "HIGHEST" not in cpu


def test_dropout_scales_bfloat16_activations_in_float32():
    layer = Dropout(0.1, rngs=nnx.Rngs(dropout=0))
    kept = layer(jnp.full((4096,), 3, jnp.bfloat16))
    kept = kept[kept != 0]
    # 3 / 0.9 = 3.333 -> bfloat16 3.328; dividing by bfloat16(0.9) = 0.8984 gave 3.344
    assert kept.dtype == jnp.bfloat16 and bool(jnp.all(kept == jnp.bfloat16(3.328125)))


def test_deterministic_switch_sets_xla_gpu_deterministic_ops_once(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    config = tiny_config(**{"execution.deterministic": True})
    execution.apply_xla_flags(config)
    execution.apply_xla_flags(config)
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"


@pytest.mark.slow
@needs_fashion_mnist
def test_the_resolved_plan_is_recorded_and_a_resume_in_another_dtype_is_refused(tmp_path):
    config = test_config.get_config()
    config.data.train_limit, config.data.val_size, config.data.test_limit = 1100, 100.0, 100
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    for name in ("data.json", "results.json"):
        with open(tmp_path / "run" / name) as f:
            plan = json.load(f)["plan"]
        assert plan["compute_dtype"] == "float32" and plan["backend"] == jax.default_backend()
        assert plan["device_count"] == 1 and plan["conv_impl"] in ("xla", "patches", "winograd") and plan["device_kind"]
    config.num_epochs = 2
    config.execution.compute_dtype = "bfloat16"
    with pytest.raises(CheckpointError) as error:
        train.train_and_evaluate(config, workdir)
    assert "was trained in float32" in str(error.value) and "\n" not in str(error.value)
