"""How many training steps each compiled call runs, bounded in time, and how long training took.

A call of `length` steps is one `lax.scan` the host waits on only at chunk boundaries: progress
lines, periodic checkpoints and SIGTERM act between calls, so a call must stay short (a few
seconds) on every backend, while long enough to amortise dispatch. The plan gives the first
length and a target duration (`execution.CHUNK_SECONDS`; none for a length asked for in the
config). The clock measures the second call of that length (the first can include waiting for a
peer process still compiling) and decides once, process 0 for every process: on an accelerator,
or after one-step probes on CPU, the chunk becomes the largest divisor of the epoch near the
target (one more compile); on CPU a ~10-step call is kept
unless it took over twice the target (so tiny models compile one program and never pay per-call
overhead), else it is cut to the target. The decided length is stored in the checkpoints and a
resume reuses it (`ChunkClock(..., length=...)`), so a resumed run runs the programs it ran.
Whatever the cut, the numbers are the same bits: steps do not depend on the call they run in,
and an epoch's sums are added step by step (`step.train_chunk`; tests/test_chunks.py).

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

    def __init__(self, plan: execution.ExecutionPlan, steps_per_epoch: int, length: int | None = None):
        """`length`: the length an earlier session decided (its checkpoint's), kept as it is."""
        self.plan, self.steps_per_epoch = plan, steps_per_epoch
        self.length = min(length or plan.steps_per_call, steps_per_epoch)
        # None: the length is decided (asked for in the config, resumed, or re-sized once)
        self.target_s = None if length else plan.chunk_seconds
        self.compiled: set[int] = set()
        self.compile_s = 0.0
        self.train_s = 0.0  # execution time of measured calls, this epoch
        self.trained_steps = 0  # their steps
        self._pending: _Call | None = None
        self._last_done = 0.0
        # The first call of the plan's length is not timed for the re-size: with several processes
        # its wait includes the first all-gather, i.e. a slower peer still compiling (which cut
        # LeNet's 10-step CPU chunks to 4 in a two-process job).
        self._first_measured = False

    def next_length(self, remaining: int) -> int:
        """The next call's steps: the chunk length, or an epoch's shorter tail in at most 4 calls of
        a length already compiled where one divides it (not, say, 60 calls of a 1-step probe)."""
        if remaining >= self.length:
            return self.length
        fits = [k for k in self.compiled if k <= remaining and remaining % k == 0 and remaining <= 4 * k]
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
        if call.length == self.length and self.target_s is not None:
            if self._first_measured:
                self.resize(seconds / call.length)
            self._first_measured = True

    @property
    def decided(self) -> int | None:
        """The chunk length once it is final (what a checkpoint stores for a resume), else None."""
        return self.length if self.target_s is None else None

    def resize(self, step_s: float) -> None:
        """Once, after the second measured call of the plan's length (`step_s` a step): the chunk
        that takes about `target_s`, or on CPU the ~10-step chunk kept where it is not too slow."""
        if self.target_s is None:
            return
        keep = self.plan.policy == "cpu" and self.length > 1 and step_s * self.length <= 2 * self.target_s
        wanted = self.length if keep else max(1, int(self.target_s / max(step_s, 1e-9)))
        if jax.process_count() > 1:  # every process must run the same programs: process 0's choice
            wanted = int(multihost_utils.broadcast_one_to_all(np.int32(wanted)))
        self.length = execution.chunk_length(self.steps_per_epoch, min(wanted, self.steps_per_epoch))
        self.target_s = None
