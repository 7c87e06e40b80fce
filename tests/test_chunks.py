"""Training calls bounded in time: chunk lengths, the same bits however an epoch is cut (a resume
reusing the decided length), and the accelerator path's progress and SIGTERM on CPU."""

import json
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import config_paths
from cifar_jax.core import execution
from cifar_jax.errors import Interrupted
from cifar_jax.job import chunks, interrupts, train
from cifar_jax.job import program as program_lib
from helpers import REPO, needs_fashion_mnist, signal_and_wait, synthetic_splits, tiny_config


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


def test_cpu_keeps_a_fast_ten_step_chunk_and_cuts_a_slow_one_to_the_target():
    plan = execution.plan(tiny_config(), steps_per_epoch=100, backend="cpu", step_bytes=lambda _: 2**20)
    assert plan.steps_per_call == 10 and plan.chunk_seconds == execution.CHUNK_SECONDS
    fast = chunks.ChunkClock(plan, 100)
    fast.resize(step_s=0.01)  # 0.1 s a call: kept, so a tiny model compiles one program
    assert fast.length == fast.decided == 10
    slow = chunks.ChunkClock(plan, 100)
    slow.resize(step_s=1.0)  # 10 s a call: cut to the largest divisor of 100 within 2 s
    assert slow.length == slow.decided == 2


def test_a_heavy_cpu_model_probes_with_one_step_then_grows_to_the_target():
    heavy = execution.plan(tiny_config(), steps_per_epoch=100, backend="cpu",
                           step_bytes=lambda _: execution.CPU_PROBE_STEP_BYTES + 1)
    assert heavy.steps_per_call == 1
    c = chunks.ChunkClock(heavy, 100)
    assert c.decided is None
    c.resize(step_s=0.3)  # 2 s / 0.3 s = 6 steps -> 5, a divisor of 100
    assert c.decided == 5


def test_a_resumed_clock_keeps_the_decided_length():
    plan = execution.plan(tiny_config(), steps_per_epoch=100, backend="cpu", step_bytes=lambda _: 2**20)
    c = chunks.ChunkClock(plan, 100, length=25)
    c.resize(step_s=1.0)
    assert c.length == c.decided == 25


def _epoch_cut_into(setup, images, labels, length: int):
    clock = chunks.ChunkClock(setup.program.plan, setup.program.steps_per_epoch, length=length)
    state, sums, _ = train.train_epoch(setup.program, jax.tree.map(jnp.copy, setup.state), setup.hparams,
                                       images, labels, 1, clock=clock)
    return jax.tree.map(np.asarray, (jax.random.key_data(state.data_key), state.params, sums))


def test_an_epoch_cut_into_any_calls_gives_the_same_bits():
    """Steps compute the same in a 1-step call or a scan of any length, and sums add step by step."""
    splits = synthetic_splits(num_train=96)
    setup = program_lib.setup_runs(tiny_config(), splits.image_shape, 10, splits.num_train)  # 12 steps
    epochs = [_epoch_cut_into(setup, *splits.train, length) for length in (1, 5, 12)]
    for other in epochs[1:]:
        jax.tree.map(np.testing.assert_array_equal, epochs[0], other)


def test_one_step_calls_give_the_bits_of_longer_calls_with_adam_batch_norm_and_run_groups():
    """The case 1-step calls once broke: XLA inlined a 1-step loop and fused the step differently
    (004's CNN, Adam, batch norm, runs in groups of 1: the 7th digit), so a job's numbers depended
    on the chunk length its clock picked from timings."""
    from configs import cnn_bn_dropout

    config = cnn_bn_dropout.get_config()
    for path, value in {"num_seeds": 3, "batch_size": 50, "model.conv_features": (16, 32),
                        "execution.runs_per_group": 1}.items():
        config_paths.assign(config, path, value)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (150, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 150).astype(np.int32))
    setup = program_lib.setup_runs(config, (32, 32, 3), 10, 150)  # 3 steps
    assert not setup.program.plan.bare_steps
    one_step, whole = (_epoch_cut_into(setup, images, labels, length) for length in (1, 3))
    jax.tree.map(np.testing.assert_array_equal, one_step, whole)


def test_xla_convolutions_on_cpu_run_one_bare_step_a_call():
    plan = execution.plan(tiny_config(**{"model.conv_impl": "xla"}), steps_per_epoch=100, backend="cpu",
                          step_bytes=lambda _: 2**20)
    assert plan.bare_steps and plan.steps_per_call == 1 and plan.chunk_seconds is None
    assert not execution.plan(tiny_config(), steps_per_epoch=100, backend="cpu",
                              step_bytes=lambda _: 2**20).bare_steps


def test_a_longer_call_asked_for_with_xla_convolutions_on_cpu_trains_every_step():
    splits = synthetic_splits(num_train=96)
    config = tiny_config(**{"model.conv_impl": "xla", "execution.steps_per_call": 4})
    setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train)  # 12 steps
    assert setup.program.plan.bare_steps and setup.program.plan.steps_per_call == 4
    state, _, done = train.train_epoch(setup.program, setup.state, setup.hparams, *splits.train, 1)
    assert done == 12 and np.asarray(state.step).tolist() == [12] * config.num_seeds


def test_an_epoch_tail_reuses_a_compiled_length_that_divides_it():
    c = clock("accelerator", 1)
    c.compiled.update({1, 2, 20})
    c.length = 20
    assert [c.next_length(r) for r in (45, 4, 5, 19)] == [20, 2, 5, 19]  # at most 4 calls of a compiled length
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


def test_the_chunk_is_sized_from_the_second_call_not_the_first():
    """With several processes the first call's wait includes the first all-gather, i.e. a peer
    still compiling: sized from it, a 1-step probe that seemed to take 0.5 s gave 2-step chunks
    (the old rule, checked), not the whole 100-step epoch a fast step allows."""
    c = clock("accelerator", 1)  # a 1-step probe, ~2 s calls wanted, 100 steps an epoch
    step = jnp.zeros((2,), jnp.int32)
    decided = []
    for call in range(3):
        c.after_call(1, c.before_call(1), step)
        if call == 0:
            time.sleep(0.5)  # the host waits at the first gather while the probe is in flight
        decided.append(c.decided)
    assert decided == [None, None, 100]  # the first probe's 0.5 s ignored; the second's time decides


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
    # mid-epoch (a step named); epoch 1 or, where the pipe was read late, a later one
    assert re.match(r"preempted at epoch [1-5] step \d+; ", stderr.strip().splitlines()[-1]), stderr[-500:]


def _job(tmp_path, monkeypatch, workdir: str, clocks: list, stop_at_poll: int = 0) -> None:
    """A 2-epoch job under time-bounded CPU chunks forced small (a 1-step probe, ~20 ms calls, so
    lengths come from timings); stops at the `stop_at_poll`-th chunk boundary. Appends its clock
    and the clock's arguments to `clocks`."""
    monkeypatch.setattr(execution, "CPU_PROBE_STEP_BYTES", 0)
    monkeypatch.setattr(execution, "CHUNK_SECONDS", 0.05)
    polls, poll, init = [0], interrupts.StopFlag.poll, chunks.ChunkClock.__init__
    monkeypatch.setattr(chunks.ChunkClock, "__init__", lambda c, *a: clocks.append((c, a)) or init(c, *a))

    def stop(flag, save_due=False):
        polls[0] += 1
        return (True, False) if polls[0] == stop_at_poll else poll(flag, save_due)
    monkeypatch.setattr(interrupts.StopFlag, "poll", stop)
    config = tiny_config(**{"data.train_limit": 600, "data.val_size": 100.0, "data.test_limit": 100,
                            "num_epochs": 2, "progress_every_s": 0.001, "num_seeds": 1})
    try:
        train.train_and_evaluate(config, str(tmp_path / workdir))
    finally:
        monkeypatch.undo()


@pytest.mark.slow
@needs_fashion_mnist
def test_time_bounded_cpu_chunks_resume_bit_identical_reusing_the_decided_length(tmp_path, monkeypatch, capsys):
    clocks = []
    _job(tmp_path, monkeypatch, "whole", clocks)
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/2  step ")]
    assert steps and int(steps[0].split()[3].split("/")[0]) < 62  # progress inside the first epoch (62 steps)
    with pytest.raises(Interrupted):  # inside epoch 1, after the length is decided (on the second call's time)
        _job(tmp_path, monkeypatch, "resumed", clocks, stop_at_poll=3)
    decided = clocks[-1][0].decided
    assert decided
    _job(tmp_path, monkeypatch, "resumed", clocks)
    assert clocks[-1][1][2] == decided == clocks[-1][0].length  # the stored chunk, no probe
    runs = [json.loads((tmp_path / w / "results.json").read_text())["runs"] for w in ("whole", "resumed")]
    assert runs[0] == runs[1]


def test_eta_after_a_resume_inside_an_epoch_counts_only_this_sessions_steps():
    """A job resumed at step 1,292 of a 2,000-step epoch has trained 0 epochs this session at that
    step and 708/2,000 of one at the epoch's end; its ETAs divide time by that, not by the steps
    trained before the resume (which once made a resumed 3-hour job say 8 minutes)."""
    from cifar_jax.job.progress import session_epochs

    assert session_epochs(1, 1292, 2000, first_epoch=1, resumed_step=1292) == 0.0
    assert session_epochs(1, 2000, 2000, first_epoch=1, resumed_step=1292) == pytest.approx(0.354)
    assert session_epochs(3, 1000, 2000, first_epoch=1, resumed_step=1292) == pytest.approx(2.354 - 0.5)
    assert session_epochs(2, 500, 1000, first_epoch=2, resumed_step=0) == 0.5  # a fresh session
