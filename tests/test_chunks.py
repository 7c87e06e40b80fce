"""Training calls bounded in time: chunk lengths, and the accelerator path's progress and SIGTERM on CPU."""

import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from cifar_jax.core import execution
from cifar_jax.job import chunks
from helpers import REPO, needs_fashion_mnist, signal_and_wait, tiny_config


def clock(policy: str, steps_per_call: int, steps_per_epoch: int = 100) -> chunks.ChunkClock:
    plan = execution.ExecutionPlan("cpu", "xla", "float32", steps_per_call, None, policy=policy,
                                   chunk_seconds=execution.CHUNK_SECONDS)
    return chunks.ChunkClock(plan, steps_per_epoch)


def test_accelerator_chunk_grows_from_one_step_to_a_divisor_of_the_epoch_near_the_target():
    c = clock("accelerator", 1)
    c.resize(step_s=0.09)  # 2 s / 0.09 s = 22 steps -> the largest divisor of 100 in [11, 22]
    assert c.length == 20
    c.resize(step_s=0.001)  # re-sized once only
    assert c.length == 20


def test_cpu_chunk_stays_the_plans_so_a_resume_runs_the_same_programs():
    plan = execution.plan(tiny_config(), steps_per_epoch=100, backend="cpu", step_bytes=lambda _: 2**20)
    assert plan.chunk_seconds is None
    c = chunks.ChunkClock(plan, 100)
    c.resize(step_s=0.5)
    assert c.length == plan.steps_per_call == 10


def test_an_epoch_tail_reuses_a_compiled_length_that_divides_it():
    c = clock("accelerator", 1)
    c.compiled.update({1, 20})
    c.length = 20
    assert [c.next_length(r) for r in (45, 19, 7)] == [20, 1, 1]
    c.compiled = {20}
    assert c.next_length(7) == 7


def test_compile_and_training_time_are_booked_apart():
    c = clock("accelerator", 1, steps_per_epoch=4)
    step = jnp.zeros((2,), jnp.int32)
    started = c.before_call(1)
    time.sleep(0.5)  # as if the dispatching call compiled
    c.after_call(1, started, step)
    c.wait()
    assert c.compile_s >= 0.5 and c.train_s < 0.5 and c.trained_steps == 1


@pytest.mark.slow
@needs_fashion_mnist
def test_accelerator_policy_on_cpu_shows_progress_inside_an_epoch_and_stops_on_sigterm_within_10s(tmp_path):
    args = [sys.executable, "-m", "cifar_jax.main", "--config", "configs/test.py", "--workdir", str(tmp_path / "w"),
            "--config.execution.policy=accelerator", "--config.execution.compute_dtype=float32",
            "--config.progress_every_s=0.2", "--config.num_epochs=5"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in iter(process.stdout.readline, ""):
            lines.append(line)
            if line.startswith("epoch 1/5  step ") and int(line.split()[3].split("/")[0]) > 1:
                break  # a progress line inside the first epoch, after the probe step
        assert any(line.startswith("compiling the training step") for line in lines), lines
        stderr, seconds = signal_and_wait(process, signal.SIGTERM)
    finally:
        process.kill()
    assert process.returncode == 75, stderr[-2000:]
    assert seconds < 10
    assert "preempted at epoch 1 step" in stderr.strip().splitlines()[-1]
