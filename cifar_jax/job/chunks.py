"""How many training steps each compiled call runs, bounded in time, and how long training took.

A call of `length` steps is one `lax.scan` the host waits on only at chunk boundaries: progress
lines, periodic checkpoints and SIGTERM act between calls, so a call must stay short (a few
seconds) on every backend, while long enough to amortise dispatch. The plan gives the first
length and, for an automatic choice on an accelerator, a target duration; the clock measures the
first call and re-sizes the chunk once, to the largest divisor of the epoch near the target (one
more compile, then one program per epoch). On CPU the plan's ~10-step chunk stays fixed: a length
chosen from timings could differ between a run and its resume, and XLA:CPU compiles a bare step
(length 1) differently from a scan, so the numbers would no longer be bit-identical (a two-process
resume test failed that way under load).

The host runs at most one call ahead of the device (it waits for call k-1 after queueing call k),
so a stop request waits for at most two calls. Compile time (spent inside the dispatching call)
is kept apart from training time (a call's execution after its dispatch), so images per second
count training only.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from cifar_jax.core import execution


@dataclasses.dataclass
class _Call:
    length: int
    dispatched: float  # when the dispatching call returned (after any compile)
    marker: Any  # a small array computed from the call's output, never donated


class ChunkClock:
    """Chunk lengths and timing of one job's training calls (shared by its epochs)."""

    def __init__(self, plan: execution.ExecutionPlan, steps_per_epoch: int):
        self.plan, self.steps_per_epoch = plan, steps_per_epoch
        self.length = plan.steps_per_call
        self.target_s = plan.chunk_seconds  # None: a fixed length (asked for in the config)
        self.compiled: set[int] = set()
        self.compile_s = 0.0
        self.train_s = 0.0  # execution time of measured calls, this epoch
        self.trained_steps = 0  # their steps
        self._pending: _Call | None = None
        self._last_done = 0.0

    def next_length(self, remaining: int) -> int:
        """The next call's steps: the chunk length, or an epoch's shorter tail in calls of a length
        already compiled where one divides it."""
        if remaining >= self.length:
            return self.length
        fits = [k for k in self.compiled if k <= remaining and remaining % k == 0]
        return max(fits) if fits else remaining

    def will_compile(self, length: int) -> bool:
        return length not in self.compiled

    def before_call(self, length: int) -> float:
        """Call before dispatching: finishes the timing of the previous call first when this one
        compiles (a compile must not count as the previous call's training). Returns the time."""
        if self.will_compile(length):
            self.wait()
        return time.perf_counter()

    def after_call(self, length: int, started: float, step: jax.Array) -> None:
        """Call right after dispatching `length` steps (`step`: any leaf of the call's output):
        books the compile, then waits for the call before it, so the host stays one call ahead."""
        now = time.perf_counter()
        if self.will_compile(length):
            self.compile_s += now - started
            self.compiled.add(length)
        previous, self._pending = self._pending, _Call(length, now, jnp.copy(step))
        if previous is not None:
            self._finish(previous)

    def wait(self) -> None:
        """Waits for the call in flight (an epoch's end, a checkpoint, a compile)."""
        previous, self._pending = self._pending, None
        if previous is not None:
            self._finish(previous)

    def start_epoch(self) -> None:
        self.train_s, self.trained_steps = 0.0, 0

    def images_per_s(self, images_per_step: int) -> float:
        return self.trained_steps * images_per_step / max(self.train_s, 1e-9)

    def _finish(self, call: _Call) -> None:
        jax.block_until_ready(call.marker)
        done = time.perf_counter()
        seconds = done - max(call.dispatched, self._last_done)
        self._last_done = done
        self.train_s += seconds
        self.trained_steps += call.length
        if call.length == self.length:
            self.resize(seconds / call.length)

    def resize(self, step_s: float) -> None:
        """Once, after the first measured call of the plan's length (`step_s` a step): the chunk
        that takes about `target_s`."""
        if self.target_s is None:
            return
        wanted = max(1, int(self.target_s / max(step_s, 1e-9)))
        if jax.process_count() > 1:  # every process must run the same programs: process 0's choice
            wanted = int(multihost_utils.broadcast_one_to_all(np.int32(wanted)))
        self.length = execution.chunk_length(self.steps_per_epoch, min(wanted, self.steps_per_epoch))
        self.target_s = None
