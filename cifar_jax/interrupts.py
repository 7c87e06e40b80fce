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

from cifar_jax.errors import CifarJaxError

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: rerun later
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


class Interrupted(CifarJaxError):
    """The run stopped at a step boundary after saving; rerunning the same command resumes it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopFlag:
    """Set by SIGTERM/SIGINT; read by the training loop between chunks."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def raise_flag(self, signum: int, _frame) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signal = signum

    def requested(self) -> bool:
        """True when this process, or (multi-process) any process, was asked to stop."""
        local = self.signal is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(local))))

    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal == signal.SIGINT else EXIT_PREEMPTED


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
