"""A run that cannot reach a step boundary still ends after a signal: the watchdog exits it after
the grace period, or at once on a second signal, saying that no checkpoint was written."""

import signal
import subprocess
import sys
import time

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
