"""End-to-end training: the CLI on real Fashion-MNIST, determinism, seed and hyperparameter parity."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cifar_jax import config_paths
from cifar_jax.job import evaluation
from cifar_jax.job import results
from cifar_jax.core import runs
from cifar_jax.core import splits as splits_lib
from cifar_jax.core import step
from cifar_jax.job import train
from cifar_jax.job import program as program_lib
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.errors import ConfigError
from cifar_jax.models.layers import DropoutRate
from configs import test as test_config
from helpers import FASHION_MNIST, REPO, assert_learned, needs_fashion_mnist, run_cli, synthetic_splits, tiny_config, train_runs


def small_test_config():
    """configs/test.py at a size that trains in seconds: 600 images, 1 seed."""
    config = test_config.get_config()
    config.num_seeds, config.data.train_limit, config.data.val_size, config.data.test_limit = 1, 800, 200.0, 200
    return config


@pytest.mark.slow
@needs_fashion_mnist
def test_cli_trains_two_seeds_on_real_fashion_mnist(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli("--config", "configs/test.py", "--workdir", str(workdir), "--config.tensorboard=True")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1/1" in result.stdout and "img/s" in result.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["num_runs"] == 2
    accuracies = [run["test_accuracy"] for run in results["runs"]]
    assert min(accuracies) > 0.6, accuracies  # chance is 0.1
    assert results["runs"][0]["val_accuracy"] != results["runs"][1]["val_accuracy"]  # distinct seeds
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed_index"] for line in lines] == [0, 1]
    row = json.loads(lines[0])
    assert 0 <= row["dead_relu_fraction"] < 1
    assert {"grad_norm/stages/0/conv", "grad_norm/out"} <= set(row) and row["grad_norm/out"] > 0
    assert np.sum(row["test_confusion"]) == 1000 and np.trace(row["test_confusion"]) == round(row["test_accuracy"] * 1000)
    assert json.loads((workdir / "config.json").read_text())["num_seeds"] == 2
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard"))


@pytest.mark.slow
def test_missing_data_fails_in_one_line_and_keeps_existing_results(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "results.json").write_text('{"keep": true}')
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("--config", "configs/test.py", "--workdir", str(workdir), f"--config.data.dir={empty}",
                     "--config.data.source=local")
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(empty) in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (workdir / "results.json").read_text() == '{"keep": true}'
    assert sorted(os.listdir(workdir)) == ["results.json"]


def test_vmapped_seeds_equal_separate_runs():
    splits = synthetic_splits()
    config = tiny_config(num_seeds=2)
    state, together = train_runs(config, splits)
    assert_learned(together["accuracy"], together["loss"])
    config_one = tiny_config(num_seeds=1)
    for seed in range(2):
        single_state, alone = train_runs(config_one, splits, seed_index=[seed])
        np.testing.assert_allclose(alone["loss"][0], together["loss"][seed], rtol=1e-4)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b[seed], atol=1e-5),
                     single_state.params, state.params)


def test_training_is_deterministic():
    splits = synthetic_splits()
    config = tiny_config(num_seeds=2)
    _, first = train_runs(config, splits)
    _, second = train_runs(config, splits)
    np.testing.assert_array_equal(first["loss"], second["loss"])
    np.testing.assert_array_equal(first["confusion"], second["confusion"])


def test_learning_rate_grid_is_one_program_equal_to_separate_runs():
    splits = synthetic_splits()
    rates = (0.01, 0.05, 0.2)
    config = tiny_config(num_seeds=1)
    config.hparam_grid.learning_rate = rates
    grid = runs.make_run_grid(config, 1)
    np.testing.assert_allclose(grid.hparams["learning_rate"], rates)
    _, together = train_runs(config, splits)
    for i, rate in enumerate(rates):
        _, alone = train_runs(tiny_config(num_seeds=1, **{"optim.learning_rate": rate}), splits)
        np.testing.assert_allclose(alone["loss"][0], together["loss"][i], rtol=1e-4)


def test_unknown_grid_axis_is_a_config_error():
    config = tiny_config()
    config.hparam_grid.batch_size = (4, 8)
    with pytest.raises(ConfigError, match="hparam_grid.batch_size"):
        runs.make_run_grid(config, 1)


@pytest.mark.slow
@needs_fashion_mnist
def test_kfold_runs_are_one_program_with_fresh_init_per_fold(tmp_path):
    workdir = tmp_path / "kfold"
    result = run_cli("--config", "configs/test.py", "--workdir", str(workdir), "--config.num_seeds=1",
                     "--config.data.num_folds=3", "--config.data.train_limit=1500")
    assert result.returncode == 0, result.stderr[-3000:]
    fold_runs = json.loads((workdir / "results.json").read_text())["runs"]
    assert [run["fold"] for run in fold_runs] == [0, 1, 2]
    assert len({run["val_accuracy"] for run in fold_runs}) == 3
    assert all(run["val_accuracy"] > 0.3 for run in fold_runs)  # chance is 0.1; 31 steps of training
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [np.sum(row["val_confusion"]) for row in rows] == [500, 500, 500]  # each fold's own third
    keys = runs.run_keys(0, np.zeros(3, int), np.arange(3))
    assert len({tuple(np.asarray(k)) for k in keys}) == 3
    # --mode=eval on val scores each fold on its own held-out third: training's own numbers come back
    config = workdir_lib.load_config(str(workdir))
    config.eval.split = "val"
    report = evaluation.run_eval(config, str(workdir))
    assert [run["accuracy"] for run in report["runs"]] == [run["val_accuracy"] for run in fold_runs]
    assert [np.sum(run["confusion"]) for run in report["runs"]] == [500, 500, 500]


def test_a_run_scored_on_its_own_subset_scores_what_the_whole_split_under_its_mask_scores():
    """k-fold validation gathers each run's held-out examples (`RunSubsets`) instead of scoring the
    whole pool under 0/1 weights: the same confusion counts, the same loss up to summation order,
    with subsets of unequal length (the shorter padded), over several batches."""
    splits = synthetic_splits()
    config = tiny_config(num_seeds=3)
    state, _ = train_runs(config, splits, epochs=1)
    setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train)
    images, labels = splits.eval["val"]
    mask = (np.random.default_rng(0).random((3, len(labels))) < np.array([[0.2], [0.5], [0.9]])).astype(np.float32)
    subsets = splits_lib.run_subsets(mask)
    assert subsets.index.shape == (3, mask.sum(axis=1).max())
    np.testing.assert_array_equal(np.asarray(subsets.weights).sum(axis=1), mask.sum(axis=1))
    gathered = train.score_split(setup.program, state, setup.hparams, images, labels, 32,
                                 subsets=setup.on_devices(subsets))
    confusion, loss_sum, _ = setup.program.eval_batch(state, setup.hparams, images, labels, setup.on_devices(mask))
    np.testing.assert_array_equal(gathered["confusion"], np.asarray(confusion))
    np.testing.assert_array_equal(gathered["confusion"].sum(axis=(1, 2)), mask.sum(axis=1))
    np.testing.assert_allclose(gathered["loss"], np.asarray(loss_sum) / mask.sum(axis=1), rtol=1e-5)


def test_subset_probabilities_come_back_at_their_examples():
    """`LoadedRun.score` puts each run's subset-ordered probabilities back at their examples, so a
    seed ensemble averages the members' predictions of the same image."""
    subsets = splits_lib.run_subsets(np.array([[0, 1, 0, 1], [1, 0, 0, 0]], np.float32))
    probs = np.array([[[0.1, 0.9], [0.3, 0.7]], [[0.6, 0.4], [0.5, 0.5]]])  # run 1's second row: padding
    placed = evaluation._in_split_order(probs, subsets, 4)
    np.testing.assert_array_equal(placed[0], [[0, 0], [0.1, 0.9], [0, 0], [0.3, 0.7]])
    np.testing.assert_array_equal(placed[1], [[0.6, 0.4], [0, 0], [0, 0], [0, 0]])


def test_data_folds_selects_folds_with_their_own_keys():
    """data.folds=(1,) trains fold 1 alone: the same fold index (so key and data) as in the full job."""
    config = small_test_config()
    config.data.num_folds, config.data.folds = 3, (1,)
    grid = runs.make_run_grid(config, 1)
    assert grid.folds == (1,) and list(grid.fold_index) == [1] * config.num_seeds
    assert {run["fold"] for run in grid.ids()} == {1}
    config.data.folds = ()
    assert list(runs.make_run_grid(config, 1).fold_index) == sorted([0, 1, 2] * config.num_seeds)
    for bad in ((3,), (1, 1)):
        config.data.folds = bad
        with pytest.raises(ConfigError, match=r"data\.folds="):
            runs.make_run_grid(config, 1)


@needs_fashion_mnist
def test_init_from_starts_from_another_runs_final_weights(tmp_path):
    """A chain of one-fold jobs, fold 1 starting from fold 0's trained weights (study 002's leaky
    k-fold): its parameters and batch statistics are fold 0's final ones, its optimizer is fresh;
    a missing or ill-fitting source is a one-line CheckpointError."""
    from cifar_jax.job import validation
    from cifar_jax.job.checkpoint import Checkpoints
    from cifar_jax.errors import CheckpointError

    def fold_job(fold: int, **overrides):
        return tiny_config(**{"data.train_limit": 600, "data.num_folds": 3, "data.folds": (fold,), "num_seeds": 2,
                              "model.conv_batch_norm": True, **overrides})

    train.train_and_evaluate(fold_job(0), str(tmp_path / "fold0"))
    chained = fold_job(1, init_from="../fold0")
    splits, grid = validation.load_checked_splits(chained)
    setup = program_lib.setup_runs(chained, splits.image_shape, len(splits.class_names), splits.num_train, grid=grid)
    start = train._initial_state(setup, chained, str(tmp_path / "fold1"))
    _, trained, _ = Checkpoints(str(tmp_path / "fold0"), keep=1, best_metric="val_accuracy").restore(
        setup.checkpoint_like(), num_runs=setup.num_runs)
    for got, want in zip(jax.tree.leaves((start.params, nnx.filter_state(start.model_state, nnx.BatchStat))),
                         jax.tree.leaves((trained.params, nnx.filter_state(trained.model_state, nnx.BatchStat)))):
        np.testing.assert_array_equal(got, want)
    fresh = setup.init()
    assert not np.array_equal(jax.tree.leaves(fresh.params)[0], jax.tree.leaves(start.params)[0])
    for got, want in zip(jax.tree.leaves(start.opt_state), jax.tree.leaves(fresh.opt_state)):
        np.testing.assert_array_equal(got, want)  # the optimizer starts fresh
    summary = train.train_and_evaluate(chained, str(tmp_path / "fold1"))
    assert {run["fold"] for run in summary["runs"]} == {1}

    chained.init_from = "../nowhere"
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        train._initial_state(setup, chained, str(tmp_path / "fold1"))
    wider = chained.copy_and_resolve_references()
    wider.init_from, wider.model.dense_features = "../fold0", (32,)
    setup = program_lib.setup_runs(wider, splits.image_shape, len(splits.class_names), splits.num_train)
    with pytest.raises(CheckpointError, match="does not fit this job"):
        train._initial_state(setup, wider, str(tmp_path / "fold1"))


@needs_fashion_mnist
def test_step_metrics_average_back_to_the_epoch_means(tmp_path):
    """log_step_metrics writes one steps.jsonl line per chunk of steps; weighted by the chunk lengths,
    the lines' dead-ReLU fractions and gradient norms give back the epoch means of metrics.jsonl."""
    from cifar_jax.job import progress

    config = small_test_config()
    config.num_seeds, config.num_epochs, config.log_step_metrics = 2, 2, True
    config.execution.steps_per_call = 7
    train.train_and_evaluate(config, str(tmp_path))
    records = progress.read_steps(str(tmp_path))
    steps_per_epoch = 600 // config.batch_size
    assert [r["step"] for r in records] == [e * steps_per_epoch + min(k, steps_per_epoch) for e in range(2)
                                           for k in range(7, steps_per_epoch + 7, 7)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for epoch in (1, 2):
        lines = [r for r in records if r["epoch"] == epoch]
        lengths = np.diff([(epoch - 1) * steps_per_epoch] + [r["step"] for r in lines])
        for name in ["dead_relu_fraction"] + [k for k in lines[0] if k.startswith("grad_norm/")]:
            by_chunk = np.array([r[name] for r in lines])  # (chunks, runs)
            expected = [row[name] for row in rows if row["epoch"] == epoch]  # per run
            np.testing.assert_allclose(lengths @ by_chunk / steps_per_epoch, expected, rtol=1e-4, err_msg=name)


def test_fold_arrays_partition_the_pool():
    labels = np.repeat(np.arange(10), 7)
    train_index, val_mask = splits_lib.fold_arrays(labels, 3, seed=0)
    np.testing.assert_array_equal(val_mask.sum(axis=0), np.ones(70))  # every example validated exactly once
    for fold in range(3):
        assert not set(train_index[fold]) & set(np.flatnonzero(val_mask[fold]))  # never trained on its own fold
    assert train_index.shape[1] == 70 - int(val_mask.sum(axis=1).max())


def test_dropout_rate_grid_builds_dropout_layers_and_rejects_models_without_them():
    splits = synthetic_splits()
    config = tiny_config(num_seeds=1)
    config.model.dropout_rate = 0.0
    config.hparam_grid.dropout_rate = (0.0, 0.5)
    state, result = train_runs(config, splits, epochs=1)
    rates = jax.tree.leaves(nnx.state(state.model_state, DropoutRate))
    assert rates and all(np.allclose(np.asarray(rate), [0.0, 0.5]) for rate in rates)
    assert result["loss"][0] != result["loss"][1]
    config.model.dropout_placement = "none"
    with pytest.raises(ConfigError, match="dropout_placement"):
        program_lib.make_train(config, splits.image_shape, 10, 256)


def test_setup_runs_trusts_the_checked_config_it_is_given(monkeypatch):
    """One validation pass per job: given the grid `validate_config` built, setting up the runs
    neither re-validates the config, nor rebuilds the grid, nor re-checks the execution fields."""
    from cifar_jax.core import execution
    from cifar_jax.job import validation

    config = tiny_config()
    grid = validation.validate_config(config, (12, 12, 1), 10, 256)
    repeated = []
    for module, name in ((validation, "validate_config"), (runs, "make_run_grid"), (execution, "validate")):
        monkeypatch.setattr(module, name, lambda *args, name=name, **kwargs: repeated.append(name))
    setup = program_lib.setup_runs(config, (12, 12, 1), 10, 256, grid=grid, abstract=True)
    assert setup.grid is grid and not repeated, repeated


def test_grid_values_get_the_config_checks():
    config = tiny_config()
    config.hparam_grid.learning_rate = (0.1, -1.0)
    with pytest.raises(ConfigError, match="learning_rate"):
        runs.make_run_grid(config, 1)
    config = tiny_config()
    config.hparam_grid.dropout_rate = (0.5, 1.0)
    with pytest.raises(ConfigError, match="dropout_rate"):
        runs.make_run_grid(config, 1)


def test_a_diverging_run_is_marked_and_the_others_carry_on():
    splits = synthetic_splits()
    config = tiny_config(num_seeds=1)
    config.hparam_grid.learning_rate = (0.05, 1e9)
    state, result = train_runs(config, splits, epochs=1)
    assert np.asarray(state.diverged).tolist() == [False, True]
    assert_learned(result["accuracy"][0], result["loss"][0])
    record = results.epoch_record(step.EpochSums(*(np.ones(2),) * 5, grad_norm={})._asdict(), {"val": result},
                                  np.asarray(state.diverged))
    assert np.isnan(record["val_accuracy"][1]) and not np.isnan(record["val_accuracy"][0])


# A wrong value in any static field must be refused before the workdir is touched, so the
# corrected rerun is never mistaken for "a run of another config".
STATIC_TYPOS = [("optim.name", "adamm"), ("optim.schedule", "cosinus"), ("optim.weight_decay_mode", "both"),
                ("optim.warmup_epochs", 5.0), ("optim.grad_clip_norm", -1.0), ("augment.crop_mode", "mirror"),
                ("augment.crop_padding", -2), ("augment.hue", 0.7), ("execution.steps_per_call", -1),
                ("execution.compute_dtype", "float16"), ("model.conv_impl", "cudnn"), ("model.activation", "swish2")]


@pytest.mark.slow
@needs_fashion_mnist
def test_bad_static_fields_leave_the_workdir_untouched_and_the_fix_runs(tmp_path):
    workdir = str(tmp_path / "run")
    for field, value in STATIC_TYPOS:
        config = small_test_config()
        config.optim.schedule = "warmup_cosine" if field == "optim.warmup_epochs" else config.optim.schedule
        config_paths.assign(config, field, value)
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            train.train_and_evaluate(config, workdir)
        assert not os.path.exists(workdir), field
    results_json = train.train_and_evaluate(small_test_config(), workdir)
    assert results_json["num_runs"] == 1


@needs_fashion_mnist
def test_every_inconsistent_field_is_reported_in_one_round(tmp_path):
    config = small_test_config()
    config.data.val_size = 10000.0  # more than the 600 training images
    config.optim.schedule, config.optim.warmup_epochs = "warmup_cosine", 5.0  # longer than the run
    config.optim.name = "adamm"
    with pytest.raises(ConfigError) as error:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    message = str(error.value)
    assert all(field in message for field in ("val_size", "warmup_epochs", "optim.name")), message


def test_config_loader_imports_neither_clu_nor_tensorflow():
    code = ("import sys; from cifar_jax.cli import workdir_config; from cifar_jax.job import workdir; from configs import block_cnn; "
            "block_cnn.get_config(); print(sorted(m for m in ('clu', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_config_checks_report_the_field_uniformly():
    config = tiny_config()
    config.optim.learning_rate = 0.0
    with pytest.raises(ConfigError, match=r"^optim\.learning_rate=0\.0 must be > 0$"):
        runs.run_hparams(config, 1)
    config.optim.learning_rate = float("nan")
    with pytest.raises(ConfigError, match=r"^optim\.learning_rate=nan must be a finite number$"):
        runs.run_hparams(config, 1)


def test_train_step_applies_augmentation_mixup_and_smoothing_inside_the_step():
    """The step's data path: with crop+flip, mixup and label smoothing on, training differs from
    the plain step, each switch changes the result, and turning them off gives back the plain step."""
    splits = synthetic_splits(num_train=64, num_eval=32)
    variants = {"plain": {}, "augment": {"augment.crop_padding": 2, "augment.flip": True},
                "mixup": {"augment.mixup_alpha": 0.4}, "smoothing": {"optim.label_smoothing": 0.2}}
    losses = {}
    for name, overrides in variants.items():
        _, result = train_runs(tiny_config(num_seeds=1, **overrides), splits, epochs=1)
        losses[name] = float(result["loss"][0])
    assert len(set(losses.values())) == len(losses), losses  # every switch reaches the step
    _, again = train_runs(tiny_config(num_seeds=1, **{"augment.mixup_alpha": 0.0}), splits, epochs=1)
    assert float(again["loss"][0]) == losses["plain"]


@pytest.mark.parametrize("shared", [False, True])
def test_shared_order_gives_every_seed_the_same_batches_and_its_own_weights(shared):
    splits = synthetic_splits(num_train=64, num_eval=32)
    config = tiny_config(num_seeds=3, **{"data.shared_order": shared})
    setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train)
    index = jnp.broadcast_to(jnp.arange(64), (3, 64))
    batches = np.asarray(setup.program.epoch_batches(setup.state, jnp.int32(1), index))
    same_order = [np.array_equal(batches[0], batches[r]) for r in (1, 2)]
    assert same_order == [shared, shared]
    kernels = np.asarray(jax.tree.leaves(setup.state.params)[0])
    assert not np.array_equal(kernels[0], kernels[1])  # initialization differs either way
    if not shared:  # the default keeps each seed's own stream: the same key as before the option
        first = np.asarray(runs.run_keys(config.seed, np.arange(3), np.zeros(3, int)))
        np.testing.assert_array_equal(np.asarray(setup.keys)[:, 0], first)
        np.testing.assert_array_equal(np.asarray(setup.keys)[:, 1], first)


@needs_fashion_mnist
@pytest.mark.parametrize("batch_norm", [True, False])
def test_dropout_and_max_pool_train_finite_on_real_images(batch_norm):
    """The fifth study's CNN (batch norm, dropout, max pool) on 1,000 Fashion-MNIST images, and
    the same without batch norm (the pool's one-pass backward): every step stays finite. That
    backward used after batch norm diverged here in the first steps: XLA rounds the batch-normed
    input differently in the fusions that count and that select the maxima (models.pooling.window_max)."""
    from configs import cnn_bn_dropout
    from cifar_jax.data import local_files

    dataset = local_files.load_local("fashion_mnist", FASHION_MNIST)
    images, labels = jnp.asarray(dataset.train_images[:1000]), jnp.asarray(dataset.train_labels[:1000])
    config = cnn_bn_dropout.get_config()
    config.num_seeds, config.batch_size, config.execution.steps_per_call = 1, 50, 1
    config.model.conv_batch_norm = batch_norm
    setup = program_lib.setup_runs(config, dataset.image_shape, dataset.num_classes, 1000)
    state, sums, _ = train.train_epoch(setup.program, setup.state, setup.hparams, images, labels, 1)
    assert not np.asarray(state.diverged).any()
    assert np.isfinite(np.asarray(sums.loss)).all()


@pytest.mark.slow
@needs_fashion_mnist
def test_a_job_without_tensorboard_never_imports_tensorflow(tmp_path):
    """configs/test.py turns TensorBoard off (half of a test job's time was TensorFlow's import):
    no event files, and nothing else in a job imports TensorFlow behind its back; nor scipy.stats
    (~1 s of every process; studies and sweeps need it, a training job does not)."""
    script = ("import atexit, runpy, sys; atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in "
              "sys.modules, 'scipy.stats imported:', 'scipy.stats' in sys.modules)); sys.argv = ['cifar_jax.main', *sys.argv[1:]]; runpy.run_module('cifar_jax.main', "
              "run_name='__main__')")
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", script, "--config", "configs/test.py", "--workdir", str(workdir),
                             "--config.data.train_limit=500", "--config.data.val_size=100",
                             "--config.data.test_limit=100"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow imported: False scipy.stats imported: False" in result.stdout, result.stdout[-2000:]
    assert (workdir / "results.json").exists() and not (workdir / "tensorboard").exists()
    assert "tensorboard:" not in result.stdout
