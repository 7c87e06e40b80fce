"""Two JAX processes on localhost (jax.distributed over 127.0.0.1, 2 CPU devices each) train one
job together: only process 0 prints and writes, results equal one process's, the checkpoint they
wrote is evaluated by one process (1 or 4 devices, from the command line: nothing inherited from
config.json waits for the gone coordinator), both or one process resume after SIGKILL, a sweep
runs as under one process, a refusal on process 0 ends both with its line, and a job whose peer
hangs exits after SIGTERM within its grace period. Every wait has a deadline."""

import json
import os
import shutil
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


def start_job(workdir, *extra: str, job: tuple[str, ...] = tuple(JOB)) -> list[subprocess.Popen]:
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return [subprocess.Popen([sys.executable, "-m", "cifar_jax.main", *job, "--workdir", str(workdir), *extra,
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


def finish(processes, status: int = 0) -> list[str]:
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == status, err[-3000:]
    return [out for out, _ in outputs]


def ours(stdout: str) -> list[str]:
    """stdout without the lines JAX's CPU collectives (gloo) print as they connect."""
    return [line for line in stdout.splitlines() if not line.startswith("[Gloo]")]


def final_runs(workdir) -> list[dict]:
    return json.loads((workdir / "results.json").read_text())["runs"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple:
    """One 2-epoch job of two processes, shared: the job the first test checks and the reference
    run the resume test compares with (each two-process start costs ~15 s of a 2-core CI). Not
    longer: after 3 epochs one of its 200 validation predictions differs from one process's."""
    workdir = tmp_path_factory.mktemp("two_processes") / "run"
    return workdir, [ours(out) for out in finish(start_job(workdir, "--config.num_epochs=2"))]


def test_two_processes_train_one_job_like_one_process(two_processes, tmp_path):
    together, (out0, out1) = two_processes
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


def test_two_processes_resume_after_sigkill(two_processes, tmp_path):
    reference, _ = two_processes  # the same job, uninterrupted
    killed = tmp_path / "killed"
    processes = start_job(killed, "--config.num_epochs=2")
    deadline = time.time() + 180
    while not (killed / "checkpoints" / "latest" / "1" / "commit_success.txt").exists():
        assert all(p.poll() is None for p in processes), "a process exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint of epoch 1 within 180 s"
        time.sleep(0.05)
    for p in processes:
        p.send_signal(signal.SIGKILL)
        p.wait()
    alone = tmp_path / "resumed_alone"
    shutil.copytree(killed, alone)
    out0, _ = finish(start_job(killed, "--config.num_epochs=2"))
    assert "resuming" in out0
    assert final_runs(killed) == final_runs(reference)
    # One process on 4 devices (the same runs per device) resumes the two processes' run alike.
    resumed = run_alone(*JOB, "--workdir", str(alone), "--config.num_epochs=2", devices=4)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    for metric in ("val_accuracy", "test_accuracy", "train_loss"):
        np.testing.assert_allclose([r[metric] for r in final_runs(alone)], [r[metric] for r in final_runs(reference)],
                                   rtol=1e-5, atol=1e-6, err_msg=metric)


SWEEP = ("--mode=sweep", "--config", "configs/sweeps/fashion_mnist_lr.py", "--config.num_epochs=1",
         "--config.sweep.axes=(('batch_size', (16, 32)),)", "--config.num_seeds=2", "--config.data.train_limit=400",
         "--config.data.val_size=100", "--config.data.test_limit=100", "--config.progress_every_s=0",
         "--config.tensorboard=False",  # as configs/test.py: TensorFlow's import is ~6 s of each process
         "--config.model.conv_features=(4,8)", "--config.model.dense_features=(16,)")  # the mechanism, not the model


def test_a_sweep_under_two_processes_reports_what_one_process_does(tmp_path):
    """Two shape-changing groups: process 0 claims each and both train it (no deadlock); only
    process 0 prints and writes; the results equal one process's."""
    out0, out1 = (ours(out) for out in finish(start_job(tmp_path / "two", job=SWEEP)))
    assert [line for line in out0 if line.startswith("sweep: worker")] == [
        "sweep: worker 1/1, group batch_size=16: 1 setting(s) x 2 seeds = 2 runs in one program",
        "sweep: worker 1/1, group batch_size=32: 1 setting(s) x 2 seeds = 2 runs in one program"]
    assert not [line for line in out1 if line.startswith(("sweep", "test", "epoch"))], out1
    alone = run_alone(*SWEEP, "--workdir", str(tmp_path / "one"), devices=4)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for group in ("batch_size=16", "batch_size=32"):
        for metric in ("val_accuracy", "test_accuracy"):
            np.testing.assert_allclose([r[metric] for r in final_runs(tmp_path / "two" / group)],
                                       [r[metric] for r in final_runs(tmp_path / "one" / group)], rtol=1e-5,
                                       atol=1e-6, err_msg=f"{group} {metric}")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_a_start_refused_on_the_primary_ends_every_process_with_its_line(tmp_path):
    workdir = tmp_path / "other"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"num_seeds": 99}))  # a run of another config
    processes = start_job(workdir)
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [1, 1], errors
    lines = [[line for line in err.splitlines() if line.startswith("error:")] for err in errors]
    assert lines[0] == lines[1] and len(lines[0]) == 1 and "holds a run of another config" in lines[0][0], lines


def test_a_job_whose_peer_hangs_exits_within_the_grace_period_after_sigterm(tmp_path):
    workdir = tmp_path / "hung"
    grace_s = 2  # the mechanism, not the length: each second here is a second of CI
    processes = start_job(workdir, "--config.num_epochs=50", f"--config.execution.stop_grace_s={grace_s}")
    try:
        deadline = time.time() + 180
        while not (workdir / "checkpoints" / "latest" / "1" / "commit_success.txt").exists():
            assert all(p.poll() is None for p in processes), "a process exited before its first checkpoint"
            assert time.time() < deadline, "no checkpoint of epoch 1 within 180 s"
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGSTOP)  # process 0 now waits for it in the next collective
        time.sleep(2)
        processes[0].send_signal(signal.SIGTERM)
        start = time.time()
        _, err = processes[0].communicate(timeout=60)
        assert time.time() - start < grace_s + 15 and processes[0].returncode == 75, err[-3000:]
        assert "no checkpoint was written" in err.strip().splitlines()[-1]
    finally:
        for p in processes:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait(timeout=60)
