"""Runs sized to memory under the accelerator policy, forced on CPU with a small memory limit."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.core import execution, memory, runs
from cifar_jax.core.splits import Examples
from cifar_jax.errors import ConfigError
from cifar_jax.job import progress, train
from cifar_jax.job import program as program_lib
from configs import test as test_config
from helpers import assert_close_reassociated, needs_fashion_mnist, synthetic_splits, tiny_config, train_runs

ACCELERATOR = {"execution.policy": "accelerator", "execution.compute_dtype": "float32"}


def plan_for(limit: int, num_seeds: int = 4, data: memory.JobData | None = None):
    splits = synthetic_splits()
    config = tiny_config(num_seeds=num_seeds, **ACCELERATOR, **{"execution.memory_limit_bytes": int(limit)})
    return config, program_lib.make_train(config, splits.image_shape, 10, splits.num_train, num_runs=num_seeds,
                                          data=data).plan


@functools.cache
def measured(with_job_data: bool = False) -> memory.RunMemory:
    """A run's memory, grouping included: of the training set alone, or of the whole job (`job_data`)."""
    splits = synthetic_splits()
    return program_lib.run_memory(tiny_config(**ACCELERATOR), splits.image_shape, 10, splits.num_train,
                                  data=job_data() if with_job_data else None)


def splits_with_test():
    """`synthetic_splits` with a test split beside val: the job keeps each run's best-epoch weights."""
    splits = synthetic_splits()
    val = splits.eval["val"]
    test = Examples(jnp.array(val.images), jnp.array(val.labels))
    return dataclasses.replace(splits, eval={"val": val, "test": test})


def job_data() -> memory.JobData:
    return train.job_data(tiny_config(), splits_with_test())


def test_a_roomy_limit_maps_all_runs_at_once_without_measuring_groups_and_names_a_runs_memory():
    _, plan = plan_for(2**30)
    assert plan.runs_per_group is None and plan.eval_batch_size == 500
    # Measured without groups: no per-run grouping bytes, and a vmapped run's step (a group of one
    # may hold more: its loop's copy of the run's state).
    assert plan.memory == dataclasses.replace(measured(), grouped=0.0, step=plan.memory.step)
    assert measured().grouped > 0 and 0 < plan.memory.step <= measured().step
    assert plan.memory.held > 0 and plan.memory.step > 0 and plan.memory.eval_example > 0
    assert "a run" in plan.memory.describe()


def test_a_tight_limit_groups_runs_and_gives_the_same_results_as_all_at_once():
    m = measured()  # this tiny model's steps are small beside what grouping holds: groups of 2 never pay
    config, plan = plan_for(m.shared + 4 * (m.held + m.grouped) + m.step)
    assert plan.runs_per_group == 1 and plan.eval_batch_size < 500
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
        plan_for(m.shared + 2 * (m.held + m.grouped) + m.step)
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


def test_the_evaluation_splits_and_best_weights_are_counted_at_their_measured_sizes():
    alone, whole = measured(), measured(with_job_data=True)
    one_run = program_lib.setup_runs(tiny_config(), (12, 12, 1), 10, 256, abstract=True,
                                     seed_index=np.array([0])).state
    eval_bytes = 2 * 128 * (12 * 12 + 4)  # val and test: uint8 images, int32 labels
    assert whole.shared == alone.shared + eval_bytes
    assert whole.best == execution.tree_bytes((one_run.params, one_run.model_state)) > 0
    assert whole.held == alone.held + whole.best and whole.restore == execution.tree_bytes(one_run)
    assert execution.tree_bytes(one_run.opt_state) > 0 and alone.held >= execution.tree_bytes(one_run)  # momentum held


def test_a_limit_that_fit_all_runs_without_the_evaluation_data_and_best_weights_now_groups_them():
    whole = measured(with_job_data=True)
    limit = whole.shared + 4 * (whole.held + whole.grouped) + whole.step
    assert plan_for(limit)[1].runs_per_group is None
    assert plan_for(limit, data=job_data())[1].runs_per_group == 1
    assert 1 <= memory.runs_that_fit(whole, 2**30, at_once=True) <= memory.runs_that_fit(whole, 2**30, at_once=False)


def test_a_limit_that_fit_one_run_at_a_time_without_them_is_now_refused():
    alone, whole = measured(), measured(with_job_data=True)
    limit = alone.shared + 4 * (alone.held + alone.grouped) + alone.step
    assert plan_for(limit)[1].runs_per_group == 1
    fits = memory.runs_that_fit(whole, limit, at_once=False)
    with pytest.raises(ConfigError, match=f"4 runs do not fit .* at most {fits} runs fit") as error:
        plan_for(limit, data=job_data())
    assert fits < 4 and "best-epoch weights" in str(error.value)


def test_the_first_line_names_a_runs_memory_with_its_best_weights_and_the_shared_data():
    whole = measured(with_job_data=True)
    config, plan = plan_for(whole.shared + 4 * (whole.held + whole.grouped) + whole.step, data=job_data())
    line = progress.describe_job(config, runs.make_run_grid(config, 1), splits_with_test(), "/tmp/w", plan)
    assert f"{memory.mib(whole.held + whole.step)} a run ({memory.mib(whole.held)} held, {memory.mib(whole.best)} " \
           "of them its best-epoch weights" in line, line
    assert f"{memory.mib(whole.shared)} shared" in line, line
    assert f"1 run at a time ({memory.mib(whole.grouped)} more a run while grouped)" in line, line


def test_runs_that_fit_takes_the_tightest_of_training_evaluation_and_restoring():
    run = memory.RunMemory(held=10, best=0, restore=0, step=30, grouped=0.0, eval_example=2.0, eval_weight=1.0,
                           eval_input=4.0, shared=100)
    assert memory.runs_that_fit(run, 200, at_once=False) == 7  # (100 - 30) // 10
    assert memory.runs_that_fit(run, 200, at_once=True) == 2  # 100 // (10 + 30)
    assert memory.runs_that_fit(dataclasses.replace(run, restore=15), 200, at_once=False) == 4  # 100 // 25
    assert memory.runs_that_fit(dataclasses.replace(run, eval_example=60.0), 200, at_once=False) == 3  # 36 // 11
    assert memory.runs_that_fit(dataclasses.replace(run, grouped=4.0), 200, at_once=False) == 5  # 70 // 14
    assert memory.runs_that_fit(run, 50, at_once=False) == 0


def test_job_data_counts_a_shared_pool_once_and_each_folds_index_and_weights_per_run():
    splits = synthetic_splits()
    pool = splits.train
    folds = dataclasses.replace(splits, eval={"val": pool}, fold_train_index=jnp.zeros((2, 200), jnp.int32),
                                fold_val_mask=jnp.zeros((2, 256), jnp.float32).at[:, :56].set(1))
    data = train.job_data(tiny_config(), folds)
    assert data.shared == 256 * (144 + 4) + 2 * 200 * 4 + 2 * 256 * 4
    # Its training index, and its 56 validation examples' indices and weights (`RunSubsets`).
    assert data.per_run == 200 * 4 + 56 * (4 + 4) and not data.keeps_best and not data.restores


@pytest.mark.parametrize("groups", [False, True])
def test_the_sized_training_call_as_xla_compiles_it_fits_the_limit(groups):
    m = measured()
    limit = int(m.shared + 4 * (m.held + m.grouped) + m.step if groups else m.shared + 4 * (m.held + m.step))
    config, plan = plan_for(limit)
    assert plan.runs_per_group == (1 if groups else None)
    splits = synthetic_splits()
    setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train, abstract=True)
    images = jax.ShapeDtypeStruct((splits.num_train, *splits.image_shape), jnp.uint8)
    batches = jax.eval_shape(setup.program.epoch_batches, setup.state, jnp.int32(1),
                             jax.ShapeDtypeStruct((4, splits.num_train), jnp.int32))
    sums = program_lib.zero_sums(4, setup.program.layer_names)
    stats = setup.program.train_steps.lower(setup.state, setup.hparams, images, images.update(
        shape=images.shape[:1], dtype=jnp.int32), batches, jnp.int32(0), sums, length=1).compile().memory_analysis()
    unaliased = stats.output_size_in_bytes - stats.alias_size_in_bytes
    assert stats.argument_size_in_bytes + stats.temp_size_in_bytes + unaliased <= limit, (stats, limit)
