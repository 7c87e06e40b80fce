"""Runs sharing a data stream share its batch: the same results as every run on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.core import runs, streams
from cifar_jax.job import train
from cifar_jax.job import program as program_lib
from tests.helpers import synthetic_splits, tiny_config


@pytest.mark.parametrize("layout", [streams.StreamLayout(2, 3, 4, False), streams.StreamLayout(2, 3, 4, True)])
def test_split_groups_the_runs_of_a_stream_and_merge_inverts_it(layout):
    runs = jnp.arange(layout.num_runs * 2).reshape(layout.num_runs, 2)  # run r = (fold, setting, seed), seeds fastest
    split = layout.split(runs)
    assert split.shape[:2] == (layout.num_runs // layout.stream_size, layout.stream_size)
    fold, seed = np.asarray(split[..., 0]) // 2 // 12, np.asarray(split[..., 0]) // 2 % 4
    assert (fold == fold[:, :1]).all()  # a stream never spans two folds
    if not layout.shared_order:
        assert (seed == seed[:, :1]).all()  # ... nor two seeds, unless every seed reads the same data
    np.testing.assert_array_equal(layout.merge(split), runs)


@pytest.mark.parametrize("folds, settings, seeds, devices, expected", [
    (1, 4, 2, 1, streams.StreamLayout(1, 4, 2, False)),
    (3, 2, 2, 3, streams.StreamLayout(1, 2, 2, False)),  # a fold per device
    (1, 4, 2, 2, streams.StreamLayout(1, 2, 2, False)),  # half the settings per device
    (1, 1, 8, 1, None),  # no grid: every stream is one run
    (1, 3, 2, 4, None),  # 6 runs padded to 8: device blocks differ
    (1, 3, 2, 2, None),  # 3 runs per device cut the (setting, seed) block
])
def test_local_layout(folds, settings, seeds, devices, expected):
    grid = runs.RunGrid(settings=({},) * settings, num_seeds=seeds, folds=tuple(range(folds)) if folds > 1 else (),
                        hparams={})
    assert streams.local_layout(grid, False, devices) == expected


@pytest.mark.parametrize("overrides, expected", [
    ({"hparam_grid": {"learning_rate": (0.05, 0.1)}}, streams.StreamLayout(1, 2, 2, False)),
    ({"data.shared_order": True}, streams.StreamLayout(1, 1, 2, True)),
])
def test_layout_counts_the_folds_trained_not_num_folds(overrides, expected):
    """data.folds=(1,) of 3 trains one fold: the layout (and one traced step and eval, as the
    CLI does before claiming the workdir) must fit its 4 or 2 runs, not 3 folds' worth."""
    config = tiny_config(num_seeds=2, **{"data.num_folds": 3, "data.folds": (1,)}, **overrides)
    splits = synthetic_splits()
    setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train, abstract=True)
    assert setup.program.stream_layout == expected
    program_lib.trace_job(setup, splits.image_shape, splits.num_train, 64)


@pytest.mark.parametrize("overrides", [
    {"hparam_grid": {"learning_rate": (0.05, 0.1), "dropout_rate": (0.1, 0.3)}},
    {"hparam_grid": {"learning_rate": (0.05, 0.1, 0.2)}, "execution.runs_per_group": 1},  # a stream's runs in turn
    {"hparam_grid": {"learning_rate": (0.05, 0.1)}, "execution.runs_per_group": 3, "data.num_folds": 2},
    {"hparam_grid": {"label_smoothing": (0.0, 0.1)}, "augment.crop_padding": 2, "augment.flip": True},
    {"hparam_grid": {"mixup_alpha": (0.0, 0.4)}, "data.shared_order": True},
])
def test_stream_batched_training_equals_every_run_alone(overrides):
    """The nested map (streams x settings) against the flat vmap of the same runs (`make_train`
    without `num_settings`), after an epoch of 32 steps: parameters, sums and validation metrics
    within the tolerance of regrouped float sums (vmap vs groups, tests/test_execution.py)."""
    config = tiny_config(num_seeds=2, **overrides)
    splits = synthetic_splits()
    results = []
    for nested in (True, False):
        setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train)
        if not nested:
            flat = program_lib.make_train(config, splits.image_shape, 10, splits.num_train)
            setup = setup._replace(program=flat)
        assert (setup.program.stream_layout is not None) == nested
        state = setup.state
        state, sums, _ = train.train_epoch(setup.program, state, setup.hparams, *splits.train, 1)
        results.append((state.params, sums, train.score_split(setup.program, state, setup.hparams,
                                                               *splits.eval["val"], 64)["accuracy"]))
    (params, sums, accuracy), (flat_params, flat_sums, flat_accuracy) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), params, flat_params)
    np.testing.assert_allclose(sums.loss, flat_sums.loss, rtol=1e-5)
    np.testing.assert_allclose(accuracy, flat_accuracy, atol=1 / 128 + 1e-6)  # at most one flipped prediction


def test_a_zero_dropout_setting_repeats_the_model_without_dropout():
    """Study 000 repeats a configuration: E0.5's dropout 0 (dropout layers built for its rate grid,
    run at rate 0) is E0.3's width 240 (no dropout layers). A rate-0 layer keeps every unit at
    scale 1 and draws from its own random stream, so that setting trained alone is the model
    without dropout bit for bit. Inside the grid its seeds train beside the other rates' runs
    (shared streams, other vmap groups): another compiled program, equal within float rounding
    only (the test above; the study reports' protocol section)."""
    splits = synthetic_splits()
    trained = []
    for rate, grid in ((0.0, {}), (0.25, {"hparam_grid.dropout_rate": (0.0,)})):
        setup = program_lib.setup_runs(tiny_config(num_seeds=2, **{"model.dropout_rate": rate}, **grid),
                                       splits.image_shape, 10, splits.num_train)
        state, sums, _ = train.train_epoch(setup.program, setup.state, setup.hparams, *splits.train, 1)
        trained.append((state.params, sums.loss))
    jax.tree.map(np.testing.assert_array_equal, *trained)
