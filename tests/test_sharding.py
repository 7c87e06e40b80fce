"""Runs sharded over devices: 8 simulated CPU devices in a subprocess (a process's device count is
fixed when JAX starts) against the same runs on this process's one device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cifar_jax.cli import main
from cifar_jax.job import evaluation
from helpers import REPO, needs_fashion_mnist
from sharded_checkpoint_worker import main as checkpoint_worker
from sharded_worker import train_tiny

EIGHT_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                 "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])}


@pytest.fixture(scope="module")
def on_eight_devices() -> dict:
    out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharded_worker.py"), "8", "6", "1x16"],
                         cwd=REPO,
                         env=EIGHT_DEVICES, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("num_runs", ["8", "6"])
def test_runs_spread_over_eight_devices_equal_one_device(on_eight_devices, num_runs):
    sharded, single = on_eight_devices[num_runs], train_tiny(int(num_runs))
    assert sharded["devices"] == 8 and single["devices"] == 1
    assert sharded["shardings"] == [sharded["runs_spec"]]  # every state leaf split along 'runs'
    assert sharded["num_state_runs"] == 8  # 6 runs are padded to the 8 devices, and the padding dropped:
    assert len(sharded["loss"]) == int(num_runs)
    # Each device vmaps fewer runs than one device does: the same products, possibly summed in
    # another order, so float32 reassociation tolerance.
    np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(sharded["accuracy"], single["accuracy"], atol=1e-6)


def test_a_grid_sharded_over_devices_shares_streams_per_device_and_equals_one_device(on_eight_devices):
    """16 learning rates of one seed: one data stream, 2 of its runs on each of 8 devices, 16 on one."""
    sharded, single = on_eight_devices["1x16"], train_tiny(1, 16)
    assert (sharded["stream_size"], single["stream_size"]) == (2, 16)
    np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(sharded["accuracy"], single["accuracy"], atol=1e-6)


def test_the_sharded_training_step_has_no_collectives(on_eight_devices):
    assert all(result["collectives"] == [] for result in on_eight_devices.values())


@pytest.mark.slow
@needs_fashion_mnist
def test_a_checkpoint_saved_on_eight_devices_is_evaluated_on_one(tmp_path, capsys):
    workdir = tmp_path / "run"
    job = ["--config", "configs/test.py", "--workdir", str(workdir), "--config.num_seeds=3",
           "--config.data.train_limit=1000", "--config.data.val_size=200", "--config.data.test_limit=300"]
    out = subprocess.run([sys.executable, "-m", "cifar_jax.main", *job], cwd=REPO, env=EIGHT_DEVICES,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 devices (cpu) in 1 process" in out.stdout.splitlines()[0]
    trained = [run["test_accuracy"] for run in json.loads((workdir / "results.json").read_text())["runs"]]
    assert len(trained) == 3  # the 5 padding runs are never reported
    report = evaluation.run_eval(evaluation.workdir_lib.load_config(str(workdir)), str(workdir))
    np.testing.assert_allclose([run["accuracy"] for run in report["runs"]], trained, atol=1e-6)
    # Resumed on this process's one device, after epoch 1 of eight: the command line's parse and
    # dispatch, run here rather than in a third process.
    config, resume_workdir, mode, _ = main.parse(["cifar_jax", *job, "--config.num_epochs=2"])
    capsys.readouterr()
    assert main.dispatch(config, resume_workdir, mode)["num_epochs"] == 2
    assert "resuming" in capsys.readouterr().out


def test_a_sharded_checkpoint_is_written_without_gathering_and_restores_onto_1_4_and_8_devices(tmp_path):
    """Each device hands Orbax its own shard (5 runs padded to 8: one run per device), the checksum
    moves only scalars, and restoring onto 1, 4 or 8 devices scores the 5 runs equally. The 8-device
    process saves and then restores from the files; 1 device is this process's own."""
    def worker(devices: int, *modes: str) -> dict:
        env = {**EIGHT_DEVICES, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharded_checkpoint_worker.py"),
                              str(tmp_path), *modes], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.splitlines()[-1])

    on_eight = worker(8, "save", "restore")
    saved = on_eight["save"]
    assert saved["shards"] and all(spec.startswith("P('runs'") and (shard, runs) == (1, 8)
                                   for spec, shard, runs in saved["shards"]), saved["shards"]
    assert saved["checksum_collectives"] == []
    restored_by_devices = {8: on_eight["restore"], 4: worker(4, "restore")["restore"],
                           1: checkpoint_worker("restore", str(tmp_path))}
    for devices, restored in restored_by_devices.items():
        assert restored["devices"] == devices
        np.testing.assert_allclose(restored["scores"], saved["scores"], rtol=1e-5, atol=1e-6, err_msg=str(devices))
