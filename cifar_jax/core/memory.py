"""Runs sized to the device's memory on accelerators, from XLA's own accounting of the compiled step.

One run's training chunk and evaluation batch are compiled once at start-up and
`memory_analysis()` says what they hold: a run keeps its state (parameters, optimizer state,
sums, batch order) for the whole job, and its step's temporaries only while its group runs. So
with n runs on a device in groups of g:  shared + n x held + g x step  must fit the limit, and the
evaluation batch is cut until g runs' evaluation temporaries fit beside the held state. A job
that cannot fit even one run at a time is refused before its workdir is claimed, with the
largest run count that fits. On CPU the plan keeps its cache-sized groups (execution.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax.core import execution, metrics, runs, step
from cifar_jax.errors import ConfigError

# A device's reported limit is not all usable: XLA's allocator fragments, and the runtime holds
# buffers of its own. The config's explicit limit is taken as given.
DEVICE_LIMIT_SHARE = 0.9


@dataclasses.dataclass(frozen=True)
class RunMemory:
    """Bytes one run needs on a device, from the compiled programs of a single run."""

    held: int  # kept for the whole job: state, epoch sums, the epoch's batch order
    step: int  # a training chunk's temporaries, while the run's group trains
    eval_example: float  # evaluation temporaries per example, while the run's group evaluates
    shared: int  # held once for all runs: the training set

    def describe(self) -> str:
        return f"{mib(self.held + self.step)} a run ({mib(self.held)} held, {mib(self.step)} while it trains)"


def mib(size: float) -> str:
    """Bytes as MiB (KiB below one MiB: the tests' tiny models)."""
    return f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size / 2**10:,.1f} KiB"


def compiled_bytes(fn: Callable[..., Any], *args: Any, donate_argnums: tuple[int, ...] = ()) -> tuple[int, int]:
    """(argument bytes, temporary + unaliased output bytes) of `fn(*args)` as XLA compiles it."""
    stats = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile().memory_analysis()
    extra = stats.temp_size_in_bytes + max(stats.output_size_in_bytes - stats.alias_size_in_bytes, 0)
    return int(stats.argument_size_in_bytes), int(extra)


def measure(config: ml_collections.ConfigDict, ctx: step.StepContext, data_shape: tuple[int, ...],
            chunk: Callable[..., Any], zero_sums: Callable[[int, tuple[str, ...]], step.EpochSums]) -> RunMemory:
    """What one run needs: `chunk` (one run's training call: state, hparams, images, labels,
    batches, start, sums) and one run's evaluation batch, compiled on `data_shape` (the training
    set's) and read from XLA's memory analysis."""
    hparams = {k: jnp.asarray(v[:1]) for k, v in runs.make_run_grid(config, data_shape[-1]).hparams.items()}
    keys = jnp.stack([runs.run_keys(config.seed, np.zeros(1, int), np.zeros(1, int))] * 2, axis=1)
    state = jax.eval_shape(jax.vmap(functools.partial(step.init_run, ctx)), keys, hparams)
    images = jax.ShapeDtypeStruct(data_shape, jnp.uint8)
    labels = jax.ShapeDtypeStruct(data_shape[:1], jnp.int32)
    batches = jax.eval_shape(jax.vmap(functools.partial(step.epoch_batches, ctx), (0, None, 0)), state,
                             jnp.int32(1), jax.ShapeDtypeStruct((1, data_shape[0]), jnp.int32))
    sums = jax.eval_shape(lambda: zero_sums(1, tuple(metrics.layer_names(state.params))))
    args, step_bytes = compiled_bytes(chunk, state, hparams, images, labels, batches, jnp.int32(0), sums,
                                      donate_argnums=(0, 6))
    shared = images.size + labels.size * 4
    batch = int(config.eval_batch_size)
    _, eval_bytes = compiled_bytes(jax.vmap(functools.partial(step.eval_step, ctx), (0, 0, None, None, 0)), state,
                                   hparams, images.update(shape=(batch, *data_shape[1:])), labels.update(shape=(batch,)),
                                   jax.ShapeDtypeStruct((1, batch), jnp.float32))
    return RunMemory(held=args - shared, step=step_bytes, eval_example=eval_bytes / batch, shared=shared)


def device_limit(config: ml_collections.ConfigDict, device: jax.Device | None = None) -> int | None:
    """`execution.memory_limit_bytes`, else a share of the device's own limit; None where the
    device reports none (CPU)."""
    requested = int(config.execution.get("memory_limit_bytes", 0) or 0)
    if requested:
        return requested
    stats = (device or jax.local_devices()[0]).memory_stats() or {}
    return int(stats["bytes_limit"] * DEVICE_LIMIT_SHARE) if "bytes_limit" in stats else None


def sized(plan: execution.ExecutionPlan, memory: RunMemory, num_runs: int, limit: int,
          eval_batch_size: int) -> execution.ExecutionPlan:
    """The plan with runs per group and the evaluation batch that fit `limit` bytes a device,
    or a one-line `ConfigError` with the largest run count that fits."""
    local = -(-plan.padded(num_runs) // plan.num_devices)
    free = limit - memory.shared - local * memory.held
    group = min(local, free // max(memory.step, 1)) if free > 0 else 0
    eval_batch = min(eval_batch_size, int(free // max(group * memory.eval_example, 1e-9))) if group else 0
    if group < 1 or eval_batch < 1:
        fits = max(0, (limit - memory.shared - memory.step) // max(memory.held, 1)) * plan.num_devices
        raise ConfigError(f"{num_runs} runs do not fit the device memory ({mib(limit)} a device; "
                          f"{memory.describe()}, {mib(memory.shared)} shared): at most {fits} runs fit; "
                          f"use fewer seeds or settings, a smaller batch, or set execution.memory_limit_bytes")
    return dataclasses.replace(plan, runs_per_group=None if group >= local else int(group),
                               eval_batch_size=eval_batch, memory=memory)
