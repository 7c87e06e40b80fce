"""A job's compiled program over a batch of runs: `make_train`, and `setup_runs`, the one place
that turns a checked config into runs, their program and their initial state.

A *run* is one model (`core/runs.py`). All runs of a config share one compiled program:
`make_train(config, ...)` resolves everything static (shapes, model, optimizer structure,
augmentation, the execution plan) and returns jitted functions of the pure steps in `core/step.py`,
mapped over the run axis (`jax.vmap`, and sharded over devices); hyperparameters that do not
change shapes are inputs, so `num_seeds x hparam_grid` trains at once. `trace_job` evaluates a
train call and an eval call abstractly, so shape errors fire before the workdir is claimed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cifar_jax.core import execution
from cifar_jax.core import memory
from cifar_jax.core import metrics
from cifar_jax import models
from cifar_jax.core import runs
from cifar_jax.core import step
from cifar_jax.core import streams
from cifar_jax.job import validation
from cifar_jax.errors import ConfigError
from cifar_jax.models.layers import DropoutRate


@dataclasses.dataclass(frozen=True)
class Program:
    """The compiled pieces of one config; every function maps over the leading run axis."""

    init: Callable[[jax.Array, dict], step.TrainState]
    epoch_batches: Callable[[step.TrainState, jax.Array, jax.Array], jax.Array]
    train_steps: Callable[..., tuple[step.TrainState, step.EpochSums]]
    eval_batch: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]  # one batch, every run on it
    eval_subset_batch: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]  # each run its own examples
    eval_graph: nnx.GraphDef  # the model in eval mode, for merging a run's state into a module
    layer_names: tuple[str, ...]  # the layers whose gradient norms are reported
    steps_per_epoch: int
    plan: execution.ExecutionPlan
    stream_layout: streams.StreamLayout | None  # each device's runs as data streams; None: a stream per run


def _model_builder(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
                   plan: execution.ExecutionPlan) -> Callable[[jax.Array, jax.Array], nnx.Module]:
    model_config = config.model.copy_and_resolve_references()
    model_config.dropout_rate = runs.built_dropout_rate(config)

    def build(params_key: jax.Array, dropout_key: jax.Array) -> nnx.Module:
        return models.create_model(model_config, input_shape=image_shape, num_classes=num_classes,
                                   rngs=nnx.Rngs(params=params_key, dropout=dropout_key),
                                   compute=plan.compute)
    return build


# Run axis of train_steps' arguments (state, hparams, images, labels, batches, start, sums): 0 per
# run, None shared.
TRAIN_STEPS_AXES = (0, 0, None, None, 0, None, 0)


def _local_train_steps(ctx: step.StepContext, layout: streams.StreamLayout | None, plan: execution.ExecutionPlan,
                       state, hparams, images, labels, batches, start, sums, *, length: int):
    """`length` steps of one device's runs: mapped over data streams (`streams.py`), each stream's
    runs mapped around its shared batch; without a layout every run is its own stream."""
    runs_per_group = plan.runs_per_group
    if layout is None:
        def run_chunk(state, hparams, images, labels, batches, start, sums):
            run = functools.partial(step.run_step, ctx, hparams=hparams, images=images, labels=labels,
                                    microbatches=plan.microbatches)
            return step.train_chunk(lambda s, b: run(s, batch_index=b), state, batches, start, sums, length=length,
                                    bare=plan.bare_steps)
        return execution.map_over_runs(run_chunk, TRAIN_STEPS_AXES, runs_per_group)(
            state, hparams, images, labels, batches, start, sums)

    per_run = frozenset(ctx.config.hparam_grid)
    # runs_per_group g: g // stream_size whole streams vmapped per group, or one stream at a time
    # with its runs g at a time.
    whole = runs_per_group is None or runs_per_group >= layout.stream_size
    streams_per_group = None if runs_per_group is None else max(1, runs_per_group // layout.stream_size)

    def stream_chunk(states, hparams, images, labels, batches, start, sums):
        one = functools.partial(step.stream_step, ctx, hparams=hparams, images=images, labels=labels,
                                per_run=per_run, runs_per_group=None if whole else runs_per_group,
                                microbatches=plan.microbatches)
        return step.train_chunk(lambda s, b: one(s, batch_index=b), states, batches[0], start, sums, length=length,
                                bare=plan.bare_steps)

    mapped = execution.map_over_runs(stream_chunk, TRAIN_STEPS_AXES, streams_per_group)
    return layout.merge(mapped(layout.split(state), layout.split(hparams), images, labels, layout.split(batches),
                               start, layout.split(sums)))


def _step_context(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
                  num_train: int, plan: execution.ExecutionPlan) -> tuple[step.StepContext, nnx.Module]:
    """The model built once abstractly (its train- and eval-mode graphs) and the step's static context."""
    build = _model_builder(config, image_shape, num_classes, plan)
    abstract = nnx.eval_shape(lambda: build(jax.random.key(0), jax.random.key(0)))
    if "dropout_rate" in config.hparam_grid and not jax.tree.leaves(nnx.state(abstract, DropoutRate)):
        raise ConfigError(f"hparam_grid.dropout_rate needs dropout layers, but model.dropout_placement="
                          f"{config.model.dropout_placement!r} places none; choose conv, dense, all or head")
    abstract.train()
    train_graph = nnx.split(abstract)[0]
    abstract.eval()
    ctx = step.StepContext(config=config, build=build, train_graph=train_graph, eval_graph=nnx.split(abstract)[0],
                           num_classes=num_classes, num_train=num_train,
                           steps_per_epoch=num_train // config.batch_size)
    return ctx, abstract


def make_train(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
               num_train: int, backend: str | None = None, grid: runs.RunGrid | None = None,
               num_runs: int | None = None, data: memory.JobData | None = None) -> Program:
    """Resolves the static parts of `config` and returns the jitted, run-vmapped functions.

    `config` has passed `validation.validate_config` (`setup_runs` sees to it): nothing here
    re-checks it, and the execution plan is decided here, once. `grid` says the runs are that whole
    run grid in run order, so runs sharing a data stream share its batch (`streams.py`); None
    trains every run on its own (e.g. a chosen subset of seeds).
    `num_runs` sizes groups and the evaluation batch to the device's memory under the accelerator
    policy (`memory.py`), counting `data` beside the runs (None: the training set alone); None
    leaves them."""
    steps_per_epoch = num_train // config.batch_size
    plan = execution.plan(
        config, steps_per_epoch=steps_per_epoch, backend=backend,
        step_bytes=lambda p: execution.model_step_bytes(_model_builder(config, image_shape, num_classes, p),
                                                        (config.batch_size, *image_shape)),
        batch_separable=lambda p: execution.batch_separable(_model_builder(config, image_shape, num_classes, p)),
        param_bytes=lambda p: execution.model_param_bytes(_model_builder(config, image_shape, num_classes, p)))
    ctx, abstract = _step_context(config, image_shape, num_classes, num_train, plan)

    if num_runs is not None and plan.policy == "accelerator" and not int(config.execution.runs_per_group):
        plan = _sized_to_memory(config, ctx, plan, num_runs, (num_train, *image_shape), data)
    plan = dataclasses.replace(plan, eval_batch_size=plan.eval_batch_size or int(config.eval_batch_size))

    def runs_mapped(fn, in_axes, group_size=None):  # each device maps its own runs: no collectives
        return execution.per_device(execution.map_over_runs(fn, in_axes, group_size), plan, in_axes)

    layout = None if grid is None else streams.local_layout(grid, bool(config.data.get("shared_order", False)),
                                                            plan.num_devices)

    def train_steps(state, hparams, images, labels, batches, start, sums, *, length: int):
        local = functools.partial(_local_train_steps, ctx, layout, plan, length=length)
        return execution.per_device(local, plan, TRAIN_STEPS_AXES)(
            state, hparams, images, labels, batches, start, sums)

    # Run once per job or epoch: XLA's optimizer would cost seconds of compile time for nothing.
    run_once = {"xla_backend_optimization_level": 0}
    return Program(
        init=jax.jit(runs_mapped(functools.partial(step.init_run, ctx), (0, 0)), compiler_options=run_once),
        epoch_batches=jax.jit(runs_mapped(functools.partial(step.epoch_batches, ctx), (0, None, 0)),
                              compiler_options=run_once),
        train_steps=jax.jit(execution.with_precision(train_steps, plan), static_argnames="length",
                            donate_argnums=(0, 6)),
        # Evaluated in the same run groups as training: a whole eval batch of every run at once
        # exhausted 24 GB for 12 runs of the three-layer CNN (study 001 on CPU).
        eval_batch=jax.jit(execution.with_precision(runs_mapped(
            functools.partial(step.eval_step, ctx), (0, 0, None, None, 0), plan.runs_per_group), plan)),
        eval_subset_batch=jax.jit(execution.with_precision(runs_mapped(
            functools.partial(step.eval_subset_step, ctx), (0, 0, None, None, 0, 0), plan.runs_per_group), plan)),
        eval_graph=ctx.eval_graph,
        layer_names=tuple(metrics.layer_names(nnx.state(abstract, nnx.Param))),
        steps_per_epoch=steps_per_epoch,
        plan=plan,
        stream_layout=layout,
    )


def _sized_to_memory(config: ml_collections.ConfigDict, ctx: step.StepContext, plan: execution.ExecutionPlan,
                     num_runs: int, data_shape: tuple[int, ...], data: memory.JobData | None
                     ) -> execution.ExecutionPlan:
    """The plan with groups and evaluation batch from one run's compiled chunk and eval batch
    (`memory.py`); unchanged where the device reports no limit and the config sets none."""
    limit = memory.device_limit(config)
    if limit is None:
        return plan
    measured = memory.measure(config, ctx, data_shape, _chunk_in_groups(ctx, plan), zero_sums, data,
                              needs_groups=lambda m: not memory.fits_at_once(m, limit, plan, num_runs))
    return memory.sized(plan, measured, num_runs, limit, int(config.eval_batch_size))


def _chunk_in_groups(ctx: step.StepContext, plan: execution.ExecutionPlan) -> Callable[[int | None], Callable]:
    """One device's one-step training call over runs in groups of a given size (`memory.measure`)."""
    def chunk(group: int | None) -> Callable:
        return functools.partial(_local_train_steps, ctx, None,
                                 dataclasses.replace(plan, mesh=None, runs_per_group=group), length=1)
    return chunk


def run_memory(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
               num_train: int, data: memory.JobData | None = None, groups: bool = True) -> memory.RunMemory:
    """A run's memory (`memory.measure`), with what grouping adds where `groups`: how many runs fit
    a limit at once and one at a time (scripts/device_check.py)."""
    plan = make_train(config, image_shape, num_classes, num_train).plan
    ctx, _ = _step_context(config, image_shape, num_classes, num_train, plan)
    return memory.measure(config, ctx, (num_train, *image_shape), _chunk_in_groups(ctx, plan), zero_sums, data,
                          needs_groups=lambda _: groups)


class RunSetup(NamedTuple):
    """Everything a job needs before its first step: which runs, their program and initial state.

    `hparams` and `state` hold `program.plan.padded(num_runs)` runs, sharded over the devices;
    `num_runs` are real (the rest are padding, trained and dropped by `real_runs`)."""

    grid: runs.RunGrid
    program: Program
    hparams: dict[str, jax.Array]
    state: step.TrainState  # concrete, or abstract (`jax.ShapeDtypeStruct`s) when only the structure is needed
    num_runs: int
    keys: jax.Array  # per run: its own key data and its data stream's (`step.init_run`), padded and sharded

    def init(self) -> step.TrainState:
        return self.program.init(self.keys, self.hparams)

    def checkpoint_like(self) -> Any:
        """The abstract state a checkpoint restores into: this job's padded runs, split over its
        mesh like the state, so each process reads only its own devices' shards (a checkpoint
        saved on another device count is cut or padded to this one's; see `Checkpoints.restore`)."""
        mesh = self.program.plan.mesh
        sharding = (jax.sharding.SingleDeviceSharding(jax.devices()[0]) if mesh is None
                    else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(execution.RUNS_AXIS)))
        return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), self.state)

    def on_devices(self, tree: Any) -> Any:
        """Per-run arrays of the real runs (or None), padded and sharded like the state."""
        plan = self.program.plan
        return None if tree is None else execution.place_runs(tree, plan.padded(self.num_runs), plan)

    def real_runs(self, tree: Any) -> Any:
        """The real runs' rows of per-run arrays (padding dropped), readable by every process."""
        return jax.tree.map(lambda leaf: leaf[: self.num_runs], execution.replicate(tree, self.program.plan))


def setup_runs(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
               num_train: int, *, grid: runs.RunGrid | None = None, abstract: bool = False,
               seed_index: np.ndarray | None = None, data: memory.JobData | None = None) -> RunSetup:
    """The one place that turns a config into runs: grid, program, per-run hparams and keys (folds
    included). `grid`: the run grid `validation.validate_config` built for this config (None:
    validate it here). `abstract=True` only traces `init` (validating the optimizer chain) and
    returns the state's shapes (`trace_job` then traces a step and an eval); `seed_index` trains
    just those seeds of the first setting and fold (tests that compare a seed alone with the batch);
    `data`: what the job keeps on the devices beside its runs, for sizing them to memory."""
    if grid is None:
        grid = validation.validate_config(config, image_shape, num_classes, num_train)
    program = make_train(config, image_shape, num_classes, num_train,
                         grid=grid if seed_index is None else None,
                         num_runs=grid.num_runs if seed_index is None else len(seed_index), data=data)
    if seed_index is None:
        seeds, folds, count = grid.seed_index, grid.fold_index, grid.num_runs
    else:
        seeds, count = np.asarray(seed_index), len(seed_index)
        folds = np.zeros_like(seeds)
    def placed(tree):  # padded and sharded like the state
        return execution.place_runs(tree, program.plan.padded(count), program.plan)

    hparams = placed(jax.tree.map(lambda v: jnp.asarray(v[:count]), grid.hparams))
    data_seeds = np.zeros_like(seeds) if config.data.get("shared_order", False) else seeds
    keys = placed(jnp.stack([runs.run_keys(config.seed, seeds, folds), runs.run_keys(config.seed, data_seeds, folds)],
                            axis=1))
    state = jax.eval_shape(program.init, keys, hparams) if abstract else program.init(keys, hparams)
    return RunSetup(grid=grid, program=program, hparams=hparams, state=state, num_runs=count, keys=keys)


def trace_job(setup: RunSetup, image_shape: tuple[int, int, int], num_train: int, eval_batch_size: int,
              subset_pool: int | None = None) -> None:
    """Evaluates one train-steps call and one eval call abstractly (a trace, no compile) on the
    job's real shapes, so every error a trace raises (a stream layout that does not fit the runs,
    reflect padding larger than the image, ...) fires before the workdir is claimed. `subset_pool`:
    the size of the split runs score their own subsets of (k folds: the pool), traced too."""
    program = setup.program
    count = program.plan.padded(setup.num_runs)
    images = jax.ShapeDtypeStruct((num_train, *image_shape), jnp.uint8)
    labels = jax.ShapeDtypeStruct((num_train,), jnp.int32)
    eval_images = jax.ShapeDtypeStruct((eval_batch_size, *image_shape), jnp.uint8)
    eval_labels = jax.ShapeDtypeStruct((eval_batch_size,), jnp.int32)
    index = jax.ShapeDtypeStruct((count, num_train), jnp.int32)
    batches = jax.eval_shape(program.epoch_batches, setup.state, jnp.int32(1), index)
    sums = jax.eval_shape(lambda: zero_sums(count, program.layer_names))
    steps = functools.partial(program.train_steps, length=min(program.plan.steps_per_call, program.steps_per_epoch))
    state, _ = jax.eval_shape(steps, setup.state, setup.hparams, images, labels, batches, jnp.int32(0), sums)
    per_run_batch = jax.ShapeDtypeStruct((count, eval_batch_size), jnp.float32)
    jax.eval_shape(program.eval_batch, state, setup.hparams, eval_images, eval_labels, per_run_batch)
    if subset_pool is not None:
        jax.eval_shape(program.eval_subset_batch, state, setup.hparams, eval_images.update(shape=(
            subset_pool, *image_shape)), eval_labels.update(shape=(subset_pool,)),
            per_run_batch.update(dtype=jnp.int32), per_run_batch)


def zero_sums(num_runs: int, layer_names: tuple[str, ...]) -> step.EpochSums:
    """An epoch's sums before its first step."""
    # A new buffer per leaf (sums are donated), put from the host: no op to compile.
    zeros = lambda: jnp.asarray(np.zeros((num_runs,), np.float32))  # noqa: E731
    return step.EpochSums(**{name: zeros() for name in step.EpochSums._fields if name != "grad_norm"},
                     grad_norm={layer: zeros() for layer in layer_names})
