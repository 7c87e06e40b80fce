"""Runs sized to memory under the accelerator policy, forced on CPU with a small memory limit."""

import jax
import pytest

from cifar_jax.errors import ConfigError
from cifar_jax.job import train
from cifar_jax.job import program as program_lib
from configs import test as test_config
from helpers import assert_close_reassociated, needs_fashion_mnist, synthetic_splits, tiny_config, train_runs

ACCELERATOR = {"execution.policy": "accelerator", "execution.compute_dtype": "float32"}


def plan_for(limit: int, num_seeds: int = 4):
    splits = synthetic_splits()
    config = tiny_config(num_seeds=num_seeds, **ACCELERATOR, **{"execution.memory_limit_bytes": limit})
    return config, program_lib.make_train(config, splits.image_shape, 10, splits.num_train, num_runs=num_seeds).plan


def measured():
    return plan_for(2**30)[1].memory


def test_a_roomy_limit_maps_all_runs_at_once_and_names_a_runs_memory():
    _, plan = plan_for(2**30)
    assert plan.runs_per_group is None and plan.eval_batch_size == 500
    assert plan.memory.held > 0 and plan.memory.step > 0 and plan.memory.eval_example > 0
    assert "a run" in plan.memory.describe()


def test_a_tight_limit_groups_runs_and_gives_the_same_results_as_all_at_once():
    m = measured()
    config, plan = plan_for(m.shared + 4 * m.held + 2 * m.step)
    assert plan.runs_per_group == 2 and plan.eval_batch_size < 500
    splits = synthetic_splits()
    grouped_state, grouped = train_runs(config, splits, epochs=1)
    config.execution.memory_limit_bytes = 2**30
    whole_state, whole = train_runs(config, splits, epochs=1)
    for name in ("loss", "accuracy"):
        assert_close_reassociated(grouped[name], whole[name], err_msg=name)
    jax.tree.map(assert_close_reassociated, grouped_state.params, whole_state.params)


def test_too_many_runs_are_refused_with_the_largest_count_that_fits():
    m = measured()
    with pytest.raises(ConfigError) as error:
        plan_for(m.shared + 2 * m.held + m.step)
    message = str(error.value)
    assert "4 runs do not fit" in message and "at most 2 runs fit" in message and "\n" not in message, message


@needs_fashion_mnist
def test_a_job_that_cannot_fit_is_refused_before_its_workdir_is_claimed(tmp_path):
    config = test_config.get_config()
    for key, value in {**ACCELERATOR, "execution.memory_limit_bytes": 2**16}.items():
        config.execution[key.split(".")[1]] = value
    with pytest.raises(ConfigError, match="at most 0 runs fit"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
