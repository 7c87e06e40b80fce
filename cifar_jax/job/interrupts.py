"""Stopping a run cleanly: SIGTERM (TPU VM and SLURM preemption), Ctrl-C, and JAX's preemption notices.

A signal only raises a flag; the training loop looks at it between step chunks and between
evaluation batches, saves a mid-epoch checkpoint there (when the flag comes while an epoch is
scored: its trained state, and the rerun scores it) and ends with `Interrupted`, which the entry
point turns into one line and a documented exit status: 75 (EX_TEMPFAIL, "try again": a job
script or SLURM's --requeue reruns the same command, which resumes) after SIGTERM or a
preemption notice, 130 after Ctrl-C.

With several processes, every process stops at the same chunk with the same reason: the signal
numbers are combined with an all-gather, and JAX's preemption sync point
(`multihost_utils.reached_preemption_sync_point`, which sees the notices the coordination service
gets, e.g. TPU maintenance events) counts as a SIGTERM on every process. The all-gather is a
barrier, so it comes about once a second (`SYNC_SECONDS`), not at every poll: on a CPU, where a
chunk is ~10 steps of tens of milliseconds, gathering at every chunk cost a two-process LeNet job
about a fifth of its speed. Process 0 times the polls and sends, with each gather, how many polls pass until the
next one, so every process gathers at the same poll.

A job that never reaches a step boundary (a peer died or hangs inside a collective) still ends:
Python runs signal handlers only between bytecodes, so a watcher thread learns of each signal
through `signal.set_wakeup_fd` and exits the process after `grace_s` seconds, or at once on a
second signal, with a line saying that no checkpoint was written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np


EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: rerun later
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C
DEFAULT_GRACE_S = 60.0  # from the first signal to a forced exit when no step boundary comes
SYNC_SECONDS = 1.0  # several processes: about this long between two all-gathers of the flags


def exit_code(signum: int | None) -> int:
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


def reason(signum: int | None) -> str:
    return "interrupted" if signum == signal.SIGINT else "preempted"


class StopFlag:
    """Set by SIGTERM/SIGINT (or a preemption notice); read by the training loop between chunks."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.polls = 0  # the preemption sync point's step id: the same on every process at each gather
        self.next_gather = 1  # several processes: the poll at which they next gather (process 0's pace)
        self._last_gather = (0, time.perf_counter())  # (poll, time) of the last gather

    def raise_flag(self, signum: int, _frame) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signal = signum

    def poll(self, save_due: bool = False) -> tuple[bool, bool]:
        """(stop, save) at a step boundary: stop when this process or (multi-process) any process
        was signalled or JAX's preemption sync point is reached; save when a periodic checkpoint
        is due anywhere. Every process gets the same answer (and adopts the same signal, so
        reason and exit status agree), so all of them save the same step."""
        self.polls += 1
        local = np.array([self.signal or 0, save_due], np.int32)
        if jax.process_count() > 1:
            if self.polls < self.next_gather:
                return False, False  # a signal here waits for the next gather, at most ~SYNC_SECONDS
            local = self._gather(local)
        if local[0] and self.signal is None:
            self.signal = int(local[0])
        return bool(local[0]), bool(local[1])

    def _gather(self, local: np.ndarray) -> np.ndarray:
        """(signal, save) agreed by all processes; sets the poll of the next gather from process 0's
        pace: the polls that took about SYNC_SECONDS since the last gather."""
        from jax.experimental import multihost_utils

        if _reached_preemption_sync_point(self.polls):
            local[0] = max(local[0], signal.SIGTERM)
        polls, since = self._last_gather
        now = time.perf_counter()
        pace = max(1, min(1000, int(SYNC_SECONDS * (self.polls - polls) / max(now - since, 1e-6))))
        gathered = np.asarray(multihost_utils.process_allgather(np.append(local, np.int32(pace))))
        self._last_gather, self.next_gather = (self.polls, now), self.polls + int(gathered[0, 2])
        # SIGTERM (15) outranks SIGINT (2): a preempted peer makes the whole job "preempted".
        return gathered[:, :2].max(axis=0)

    def exit_code(self) -> int:
        return exit_code(self.signal)

    def reason(self) -> str:
        return reason(self.signal)


def _reached_preemption_sync_point(step_id: int) -> bool:
    """JAX's preemption sync point, where its coordination service provides one; else False."""
    from jax.experimental import multihost_utils

    try:
        return bool(multihost_utils.reached_preemption_sync_point(step_id))
    except RuntimeError:  # the preemption service is off
        return False


class _Watchdog:
    """A thread woken by every signal (through the wakeup fd, also while the main thread is stuck
    in C++): ends the process `grace_s` after the first signal, or at the second."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.done = threading.Event()
        self.reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        self.thread = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)

    def _watch(self) -> None:
        first = self._next_signal(None)
        if first is None:
            return
        second = self._next_signal(self.grace_s)
        if self.done.is_set():
            return
        how = "a second signal" if second else f"{self.grace_s:g} s without reaching a step boundary"
        print(f"{reason(first)}: stopped after {how}; no checkpoint was written, so a rerun resumes from the "
              f"last one", file=sys.stderr, flush=True)
        os._exit(exit_code(first))  # the main thread may be inside a collective that never returns

    def _next_signal(self, timeout: float | None) -> int | None:
        """The next signal's number; None once the run ended or the timeout passed."""
        self.reader.settimeout(timeout)
        try:
            data = self.reader.recv(1)
        except (TimeoutError, OSError):
            return None
        return None if self.done.is_set() or not data else data[0]

    def close(self) -> None:
        self.done.set()
        self.writer.close()  # wakes the thread: recv returns b""
        self.thread.join(timeout=5)
        self.reader.close()


@contextlib.contextmanager
def stop_on_signals(grace_s: float = DEFAULT_GRACE_S) -> Iterator[StopFlag]:
    """Installs the flag for SIGTERM and SIGINT for the duration of a run (main thread only), and
    the watchdog that ends a run which cannot reach a step boundary (`grace_s`; 0 turns it off)."""
    flag = StopFlag()
    previous = {sig: signal.signal(sig, flag.raise_flag) for sig in (signal.SIGTERM, signal.SIGINT)}
    watchdog = _Watchdog(grace_s) if grace_s > 0 else None
    previous_fd = signal.set_wakeup_fd(watchdog.writer.fileno(), warn_on_full_buffer=False) if watchdog else None
    if watchdog:
        watchdog.thread.start()
    try:
        yield flag
    finally:
        if watchdog:
            signal.set_wakeup_fd(previous_fd)
            watchdog.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
