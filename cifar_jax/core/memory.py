"""Runs sized to the device's memory on accelerators, from XLA's own accounting of the compiled step.

A training chunk and an evaluation batch of 2 runs are compiled once at start-up and
`memory_analysis()` says what a run holds (optimizer state included: it is the chunk's argument).
A run keeps for the whole job its state, hyperparameters, keys, epoch sums, batch order, its own
data (a fold's index and weights) and, where the test split waits for each run's best epoch, a
second copy of its weights (`job/best_runs.py`); its step's temporaries only while its group runs.
Every run reads the same training set and evaluation splits, held once a device. So with n runs
on a device in groups of g:  shared + n x (held + grouped) + g x step  must fit the limit (grouped:
what slicing the runs into groups and stacking their outputs holds per run, measured only where
the runs may not fit at once; 0 for one vmap), as must the evaluation of g runs (the batch is cut
to fit) and, as the job starts, a state restored per run.
A job that cannot fit even one run at a time is refused before its workdir is claimed, with the
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
from cifar_jax.core.execution import tree_bytes
from cifar_jax.errors import ConfigError

# A device's reported limit is not all usable: XLA's allocator fragments, and the runtime holds
# buffers of its own. The config's explicit limit is taken as given.
DEVICE_LIMIT_SHARE = 0.9


@dataclasses.dataclass(frozen=True)
class JobData:
    """What a job keeps on a device beside its runs' training state, in bytes measured from the
    placed arrays (`job/train.py`'s `job_data`): counted once, or once per run."""

    shared: int  # read by every run, once a device: the training set, the evaluation splits, the fold indices
    per_run: int = 0  # each run's own arrays: its fold's training index and validation weights
    keeps_best: bool = False  # each run's weights at its best epoch, beside its state (`job/best_runs.py`)
    restores: bool = False  # a whole restored state per run beside its own as the job starts (best weights, init_from)


@dataclasses.dataclass(frozen=True)
class RunMemory:
    """Bytes one run needs on a device, from compiled programs of 2 (and 4) runs."""

    held: int  # kept for the whole job: state, hparams, keys, epoch sums, batch order, own data, best weights
    best: int  # of `held`: the copy of its weights at its best epoch (0 where none is kept)
    restore: int  # only while the job starts: a restored state beside its own (0 where none)
    step: int  # a training chunk's temporaries, while the run's group trains (vmapped, or a group of one)
    grouped: float  # kept while any group trains, where runs train in groups: its inputs and outputs sliced and stacked
    eval_example: float  # evaluation temporaries per example, while the run's group evaluates
    eval_weight: float  # its 0/1 weight per example of an evaluation batch, while any group evaluates
    eval_input: float  # shared per example of an evaluation batch: the image and label
    shared: int  # held once for all runs: the training set and the evaluation splits

    def describe(self) -> str:
        best = f", {mib(self.best)} of them its best-epoch weights" if self.best else ""
        return (f"{mib(self.held + self.step)} a run ({mib(self.held)} held{best}, {mib(self.step)} while it "
                f"trains), {mib(self.shared)} shared (training and evaluation data)")


def mib(size: float) -> str:
    """Bytes as MiB (KiB below one MiB: the tests' tiny models)."""
    return f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size / 2**10:,.1f} KiB"


def compiled_bytes(fn: Callable[..., Any], *args: Any, donate_argnums: tuple[int, ...] = ()) -> tuple[int, int]:
    """(argument bytes, temporary + unaliased output bytes) of `fn(*args)` as XLA compiles it."""
    stats = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile().memory_analysis()
    extra = stats.temp_size_in_bytes + max(stats.output_size_in_bytes - stats.alias_size_in_bytes, 0)
    return int(stats.argument_size_in_bytes), int(extra)


def _chunk_args(config: ml_collections.ConfigDict, ctx: step.StepContext, data_shape: tuple[int, ...],
                zero_sums: Callable[[int, tuple[str, ...]], step.EpochSums], num_runs: int) -> tuple[Any, tuple]:
    """The run keys and the abstract arguments of a training call over `num_runs` runs (state,
    hparams, images, labels, batch order, start, sums)."""
    hparams = {k: jnp.asarray(np.repeat(v[:1], num_runs, axis=0))
               for k, v in runs.make_run_grid(config, data_shape[-1]).hparams.items()}
    zeros = np.zeros(num_runs, int)
    keys = jax.eval_shape(lambda: jnp.stack([runs.run_keys(config.seed, zeros, zeros)] * 2, axis=1))  # shapes only
    state = jax.eval_shape(jax.vmap(functools.partial(step.init_run, ctx)), keys, hparams)
    images = jax.ShapeDtypeStruct(data_shape, jnp.uint8)
    labels = jax.ShapeDtypeStruct(data_shape[:1], jnp.int32)
    batches = jax.eval_shape(jax.vmap(functools.partial(step.epoch_batches, ctx), (0, None, 0)), state,
                             jnp.int32(1), jax.ShapeDtypeStruct((num_runs, data_shape[0]), jnp.int32))
    sums = jax.eval_shape(lambda: zero_sums(num_runs, tuple(metrics.layer_names(state.params))))
    return keys, (state, hparams, images, labels, batches, jnp.int32(0), sums)


def measure(config: ml_collections.ConfigDict, ctx: step.StepContext, data_shape: tuple[int, ...],
            chunk: Callable[[int | None], Callable[..., Any]],
            zero_sums: Callable[[int, tuple[str, ...]], step.EpochSums], data: JobData | None = None,
            needs_groups: Callable[[RunMemory], bool] = lambda _: True) -> RunMemory:
    """What a run needs, from XLA's memory analysis of training calls compiled on `data_shape`
    (the training set's): `chunk(g)` is a call over runs in groups of g (None: all at once),
    compiled for 2 runs at once (a vmap of 1 run compiles leaner than of n) and, where
    `needs_groups` says the runs may not fit at once, for 2 and 4 runs one at a time (what grouping
    adds per run; else 0, two compiles saved); and of 2 runs' evaluation batch; plus what the job
    keeps beside them (`data`; None: the training set alone)."""
    keys, args = _chunk_args(config, ctx, data_shape, zero_sums, 2)
    state, hparams, images, labels = args[:4]
    arg_bytes, step_bytes = compiled_bytes(chunk(None), *args, donate_argnums=(0, 6))
    data = data or JobData(shared=tree_bytes((images, labels)))
    batch = int(config.eval_batch_size)
    eval_args = (images.update(shape=(batch, *data_shape[1:])), labels.update(shape=(batch,)),
                 jax.ShapeDtypeStruct((2, batch), jnp.float32))
    _, eval_bytes = compiled_bytes(jax.vmap(functools.partial(step.eval_step, ctx), (0, 0, None, None, 0)), state,
                                   hparams, *eval_args)
    best = tree_bytes((state.params, state.model_state)) // 2 if data.keeps_best else 0
    ungrouped = RunMemory(held=(arg_bytes - tree_bytes((images, labels)) + tree_bytes(keys)) // 2 + data.per_run + best,
                          best=best, restore=tree_bytes(state) // 2 if data.restores else 0, step=step_bytes // 2,
                          grouped=0.0, eval_example=eval_bytes / 2 / batch,
                          eval_weight=tree_bytes(eval_args[2]) / 2 / batch, eval_input=tree_bytes(eval_args[:2]) / batch,
                          shared=data.shared)
    if not needs_groups(ungrouped):
        return ungrouped
    two, four = (compiled_bytes(chunk(1), *runs_args, donate_argnums=(0, 6))[1]
                 for runs_args in (args, _chunk_args(config, ctx, data_shape, zero_sums, 4)[1]))
    per_run = max(four - two, 0) / 2
    # A group's loop carries its own copy of the group's state: one group of one run may hold
    # more temporaries than a vmapped run's step.
    return dataclasses.replace(ungrouped, grouped=per_run, step=max(ungrouped.step, int(two - 2 * per_run)))


def device_limit(config: ml_collections.ConfigDict, device: jax.Device | None = None) -> int | None:
    """`execution.memory_limit_bytes`, else a share of the device's own limit; None where the
    device reports none (CPU)."""
    requested = int(config.execution.get("memory_limit_bytes", 0) or 0)
    if requested:
        return requested
    stats = (device or jax.local_devices()[0]).memory_stats() or {}
    return int(stats["bytes_limit"] * DEVICE_LIMIT_SHARE) if "bytes_limit" in stats else None


def local_runs(plan: execution.ExecutionPlan, num_runs: int) -> int:
    """The runs each device trains: `num_runs` padded to the device count, split over the devices."""
    return plan.padded(num_runs) // plan.num_devices


def fits_at_once(memory: RunMemory, limit: int, plan: execution.ExecutionPlan, num_runs: int) -> bool:
    """Whether every run of a device trains and evaluates in one vmap within `limit` bytes."""
    return runs_that_fit(memory, limit, at_once=True) >= local_runs(plan, num_runs)


def runs_that_fit(memory: RunMemory, limit: int, at_once: bool) -> int:
    """The most runs one device holds under `limit` bytes, trained and evaluated one at a time or
    all at once: their held bytes beside the largest of a group's training temporaries, a
    one-example evaluation batch, and a state restored per run as the job starts."""
    room = limit - memory.shared
    held = memory.held + (0 if at_once else memory.grouped)
    group_eval = memory.eval_weight + memory.eval_example if at_once else memory.eval_weight
    bounds = ((room - (0 if at_once else memory.step)) // max(held + (memory.step if at_once else 0), 1),
              room // max(memory.held + memory.restore, 1),
              (room - memory.eval_input - (0 if at_once else memory.eval_example)) // max(held + group_eval, 1))
    return max(0, int(min(bounds)))


def sized(plan: execution.ExecutionPlan, memory: RunMemory, num_runs: int, limit: int,
          eval_batch_size: int) -> execution.ExecutionPlan:
    """The plan with runs per group and the evaluation batch that fit `limit` bytes a device,
    or a one-line `ConfigError` with the largest run count that fits."""
    local = local_runs(plan, num_runs)
    at_once = fits_at_once(memory, limit, plan, num_runs)
    if not at_once and runs_that_fit(memory, limit, at_once=False) < local:
        fits = runs_that_fit(memory, limit, at_once=False) * plan.num_devices
        best = f", {mib(memory.best)} of it best-epoch weights" if memory.best else ""
        raise ConfigError(f"{num_runs} runs do not fit the device memory ({mib(limit)} a device, {mib(memory.shared)} "
                          f"of it shared data; {mib(memory.held + memory.step)} a run{best}): at most {fits} runs "
                          f"fit; use fewer seeds or settings, a smaller batch, or set execution.memory_limit_bytes")
    free = limit - memory.shared - local * (memory.held + (0 if at_once else memory.grouped))
    eval_free = free - memory.eval_input - local * memory.eval_weight  # beside a one-example batch's inputs
    group = local if at_once else int(min(local, free // max(memory.step, 1),
                                          eval_free // max(memory.eval_example, 1e-9)))
    per_example = memory.eval_input + local * memory.eval_weight + group * memory.eval_example
    eval_batch = min(eval_batch_size, int(free // max(per_example, 1e-9)))
    return dataclasses.replace(plan, runs_per_group=None if group >= local else group,
                               eval_batch_size=eval_batch, memory=memory)
