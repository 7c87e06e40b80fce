"""Stopping a run cleanly: SIGTERM (TPU VM and SLURM preemption) and Ctrl-C.

A signal only raises a flag; the training loop looks at it between step chunks, saves a mid-epoch
checkpoint there and ends with `Interrupted`, which the entry point turns into one line and a
documented exit status: 75 (EX_TEMPFAIL, "try again": a job script or SLURM's --requeue reruns
the same command, which resumes) after SIGTERM, 130 after Ctrl-C. A second Ctrl-C stops at once.
With several processes, every process stops at the same chunk: the flags are combined with an
all-gather, so all of them save the same step.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import jax
import numpy as np


EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: rerun later
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


class StopFlag:
    """Set by SIGTERM/SIGINT; read by the training loop between chunks."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def raise_flag(self, signum: int, _frame) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signal = signum

    def poll(self, save_due: bool = False) -> tuple[bool, bool]:
        """(stop, save) at a step boundary: stop when this process or (multi-process) any process
        was signalled; save when a periodic checkpoint is due anywhere. Every process gets the same
        answer, so all of them save the same step."""
        local = np.array([self.signal is not None, save_due], np.int32)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            local = np.asarray(multihost_utils.process_allgather(local)).max(axis=0)
        return bool(local[0]), bool(local[1])

    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal == signal.SIGINT else EXIT_PREEMPTED

    def reason(self) -> str:
        return "interrupted" if self.signal == signal.SIGINT else "preempted"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Installs the flag for SIGTERM and SIGINT for the duration of a run (main thread only)."""
    flag = StopFlag()
    previous = {sig: signal.signal(sig, flag.raise_flag) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
