"""A run that cannot reach a step boundary still ends after a signal: the watchdog exits it after
the grace period, or at once on a second signal, saying that no checkpoint was written."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO

# Blocks the main thread in C on a mutex it already holds: no signal interrupts that wait and no
# Python handler runs, as in a collective whose peer is gone.
STUCK = """
import ctypes, sys
from cifar_jax.job import interrupts
libc, mutex = ctypes.CDLL(None), ctypes.create_string_buffer(64)  # zeros: PTHREAD_MUTEX_INITIALIZER
with interrupts.stop_on_signals(float(sys.argv[1])):
    libc.pthread_mutex_lock(mutex)
    print("stuck", flush=True)
    libc.pthread_mutex_lock(mutex)
print("not reached")
"""


@pytest.mark.parametrize("grace_s, signals, status, within_s", [
    (1.5, (signal.SIGTERM,), 75, 10.0),  # the grace period
    (600.0, (signal.SIGTERM, signal.SIGTERM), 75, 10.0),  # a second signal: at once
    (600.0, (signal.SIGINT, signal.SIGINT), 130, 10.0),
])
def test_a_stuck_run_exits_after_the_grace_period_or_a_second_signal(grace_s, signals, status, within_s):
    process = subprocess.Popen([sys.executable, "-c", STUCK, str(grace_s)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "stuck"
        start = time.time()
        for signum in signals:
            process.send_signal(signum)
            time.sleep(0.2)
        out, err = process.communicate(timeout=within_s + 20)
    finally:
        process.kill()
    assert time.time() - start < within_s + (grace_s if len(signals) == 1 else 0)
    assert process.returncode == status and "not reached" not in out
    assert err.strip().endswith("no checkpoint was written, so a rerun resumes from the last one"), err
    assert err.count("\n") == 1, err  # one line, no traceback


def test_a_run_that_stops_at_a_step_boundary_is_not_killed_by_the_watchdog():
    code = ("import os, signal, time\nfrom cifar_jax.job import interrupts\n"
            "with interrupts.stop_on_signals(0.5) as flag:\n    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(0.1)\n    assert flag.poll() == (True, False) and flag.exit_code() == 75\n"
            "time.sleep(1.5)\nprint('ended')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ended", result.stderr


def test_processes_gather_their_flags_at_process_0s_pace_and_agree(monkeypatch):
    """With several processes the flags are all-gathered about once a SYNC_SECONDS, not at every
    chunk (a barrier that cost CPU jobs a third of their speed): a signal waits for the next
    gather, where every process learns it, and process 0's pace sets when that is."""
    from jax.experimental import multihost_utils

    from cifar_jax.job import interrupts

    gathers = []

    def allgather(local):  # this process is 0, beside a peer that may have been sent SIGTERM
        gathers.append(local.copy())
        peer = np.array([signal.SIGTERM if peer_signalled else 0, 0, 1], np.int32)  # (signal, save, pace)
        return np.stack([local, peer])
    monkeypatch.setattr(interrupts.jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    monkeypatch.setattr(interrupts, "_reached_preemption_sync_point", lambda step_id: False)
    monkeypatch.setattr(interrupts, "SYNC_SECONDS", 3600.0)  # polls come far faster: the pace hits its cap
    flag, peer_signalled = interrupts.StopFlag(), False
    assert flag.poll() == (False, False) and len(gathers) == 1  # the first poll gathers
    assert flag.next_gather == 1 + gathers[0][2] and gathers[0][2] == 1000  # process 0's pace, capped
    peer_signalled = True
    answers = [flag.poll() for _ in range(1000)]
    assert answers == [(False, False)] * 999 + [(True, False)] and len(gathers) == 2  # seen at the gather
    assert flag.signal == signal.SIGTERM and flag.exit_code() == interrupts.EXIT_PREEMPTED
