"""End-to-end training: the CLI on real Fashion-MNIST, determinism, seed and hyperparameter parity."""

import json
import os

import jax
import numpy as np
import pytest

from cifar_jax import train
from helpers import needs_fashion_mnist, run_cli, synthetic_splits, tiny_config, train_runs


@needs_fashion_mnist
def test_cli_trains_two_seeds_on_real_fashion_mnist(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli("--config", "configs/test.py", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 1/1" in result.stdout and "img/s" in result.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["num_runs"] == 2
    accuracies = [run["test_accuracy"] for run in results["runs"]]
    assert min(accuracies) > 0.6, accuracies  # chance is 0.1
    assert results["runs"][0]["val_accuracy"] != results["runs"][1]["val_accuracy"]  # distinct seeds
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed_index"] for line in lines] == [0, 1]
    assert json.loads((workdir / "config.json").read_text())["num_seeds"] == 2
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard"))


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
    assert together["accuracy"].min() > 0.2  # chance is 0.1
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
    grid = train.make_run_grid(config, 1)
    np.testing.assert_allclose(grid.hparams["learning_rate"], rates)
    _, together = train_runs(config, splits)
    for i, rate in enumerate(rates):
        _, alone = train_runs(tiny_config(num_seeds=1, **{"optim.learning_rate": rate}), splits)
        np.testing.assert_allclose(alone["loss"][0], together["loss"][i], rtol=1e-4)


def test_unknown_grid_axis_is_a_config_error():
    config = tiny_config()
    config.hparam_grid.batch_size = (4, 8)
    with pytest.raises(train.ConfigError, match="hparam_grid.batch_size"):
        train.make_run_grid(config, 1)
