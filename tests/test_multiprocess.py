"""Two JAX processes on localhost (jax.distributed over 127.0.0.1, 2 CPU devices each) train one
job together: only process 0 prints and writes, results equal one process's, the checkpoint they
wrote is evaluated by one process on one device, and both resume after being SIGKILLed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cifar_jax.job import evaluation
from cifar_jax.job import workdir as workdir_lib
from helpers import REPO, needs_fashion_mnist, run_cli

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

JOB = ["--config", "configs/test.py", "--config.num_seeds=4", "--config.data.train_limit=1000",
       "--config.data.val_size=200", "--config.data.test_limit=300", "--config.progress_every_s=0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_job(workdir, *extra: str) -> list[subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return [subprocess.Popen([sys.executable, "-m", "cifar_jax.main", *JOB, "--workdir", str(workdir), *extra,
                              "--config.execution.distributed=True",
                              f"--config.execution.coordinator_address=127.0.0.1:{port}",
                              "--config.execution.num_processes=2", f"--config.execution.process_id={i}"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def run_alone(*args: str, devices: int) -> subprocess.CompletedProcess:
    """The command line in one process on `devices` CPU devices, within a deadline."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run([sys.executable, "-m", "cifar_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)


def finish(processes) -> list[str]:
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def ours(stdout: str) -> list[str]:
    """stdout without the lines JAX's CPU collectives (gloo) print as they connect."""
    return [line for line in stdout.splitlines() if not line.startswith("[Gloo]")]


def final_runs(workdir) -> list[dict]:
    return json.loads((workdir / "results.json").read_text())["runs"]


def test_two_processes_train_one_job_like_one_process(tmp_path):
    together = tmp_path / "two"
    out0, out1 = (ours(out) for out in finish(start_job(together, "--config.num_epochs=2")))
    assert "4 devices (cpu) in 2 processes" in out0[0]
    # Process 1 prints none of the run's lines (gloo's C++ connection messages, interleaved by its
    # threads, may still appear in fragments).
    assert not [line for line in out1 if line.startswith(("test:", "epoch", "done", "resuming", "  "))], out1
    alone = tmp_path / "one"
    result = run_cli(*JOB, "--workdir", str(alone), "--config.num_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    for metric in ("val_accuracy", "test_accuracy", "train_loss"):
        np.testing.assert_allclose([r[metric] for r in final_runs(together)], [r[metric] for r in final_runs(alone)],
                                   rtol=1e-5, atol=1e-6, err_msg=metric)
    # The checkpoint two processes wrote, evaluated by this one process on its one device:
    report = evaluation.run_eval(workdir_lib.load_config(str(together)), str(together))
    np.testing.assert_allclose([r["accuracy"] for r in report["runs"]],
                               [r["test_accuracy"] for r in final_runs(together)], atol=1e-6)
    # ... and from the command line by one process on 1 and 4 devices: config.json holds no launch
    # fields, so nothing waits for the (gone) coordinator.
    assert json.loads((together / "config.json").read_text())["execution"]["distributed"] is False
    for devices in (1, 4):
        evaluated = run_alone("--mode=eval", "--workdir", str(together), devices=devices)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        report = json.loads((together / "eval" / "latest-epoch2-test.json").read_text())
        np.testing.assert_allclose([r["accuracy"] for r in report["runs"]],
                                   [r["test_accuracy"] for r in final_runs(together)], atol=1e-6)
    # One process on 4 devices resumes the two processes' run to a third epoch, as one process alone.
    for workdir, devices in ((together, 4), (alone, 1)):
        resumed = run_alone(*JOB, "--workdir", str(workdir), "--config.num_epochs=3", devices=devices)
        assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    for metric in ("val_accuracy", "test_accuracy", "train_loss"):
        np.testing.assert_allclose([r[metric] for r in final_runs(together)], [r[metric] for r in final_runs(alone)],
                                   rtol=1e-5, atol=1e-6, err_msg=metric)


def test_two_processes_resume_after_sigkill(tmp_path):
    reference = tmp_path / "uninterrupted"
    finish(start_job(reference, "--config.num_epochs=3"))
    killed = tmp_path / "killed"
    processes = start_job(killed, "--config.num_epochs=3")
    deadline = time.time() + 180
    while not (killed / "checkpoints" / "latest" / "1" / "commit_success.txt").exists():
        assert all(p.poll() is None for p in processes), "a process exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint of epoch 1 within 180 s"
        time.sleep(0.05)
    for p in processes:
        p.send_signal(signal.SIGKILL)
        p.wait()
    out0, _ = finish(start_job(killed, "--config.num_epochs=3"))
    assert "resuming" in out0
    assert final_runs(killed) == final_runs(reference)
