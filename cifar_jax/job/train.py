"""The training program over a batch of runs, and the loop that drives it.

A *run* is one model (`runs.py`). All runs of a config share one compiled program:
`make_train(config, ...)` resolves everything static (shapes, model, optimizer structure,
augmentation, the execution plan) and returns jitted functions of the pure steps in `step.py`,
mapped over the run axis (`jax.vmap`, and sharded over devices); hyperparameters that do not
change shapes are inputs, so `num_seeds x hparam_grid` trains at once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cifar_jax.core import execution
from cifar_jax.core import memory
from cifar_jax.job import best_runs, chunks, interrupts
from cifar_jax.core import metrics
from cifar_jax import models
from cifar_jax.job import progress
from cifar_jax.job import results
from cifar_jax.core import runs
from cifar_jax.core import step
from cifar_jax.core import streams
from cifar_jax.job import validation
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.job.checkpoint import Checkpoints, warm_start_state
from cifar_jax.errors import CheckpointError, ConfigError, Interrupted
from cifar_jax.models.layers import DropoutRate
from cifar_jax.core.splits import examples_for, run_train_index


@dataclasses.dataclass(frozen=True)
class Program:
    """The compiled pieces of one config; every function maps over the leading run axis."""

    init: Callable[[jax.Array, dict], step.TrainState]
    epoch_batches: Callable[[step.TrainState, jax.Array, jax.Array], jax.Array]
    train_steps: Callable[..., tuple[step.TrainState, step.EpochSums]]
    eval_batch: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
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
            return step.train_chunk(lambda s, b: run(s, batch_index=b), state, batches, start, sums, length=length)
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
        return step.train_chunk(lambda s, b: one(s, batch_index=b), states, batches[0], start, sums, length=length)

    mapped = execution.map_over_runs(stream_chunk, TRAIN_STEPS_AXES, streams_per_group)
    return layout.merge(mapped(layout.split(state), layout.split(hparams), images, labels, layout.split(batches),
                               start, layout.split(sums)))


def make_train(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
               num_train: int, backend: str | None = None, grid: runs.RunGrid | None = None,
               num_runs: int | None = None) -> Program:
    """Resolves the static parts of `config` and returns the jitted, run-vmapped functions.

    `config` has passed `validation.validate_config` (`setup_runs` sees to it): nothing here
    re-checks it, and the execution plan is decided here, once. `grid` says the runs are that whole
    run grid in run order, so runs sharing a data stream share its batch (`streams.py`); None
    trains every run on its own (e.g. a chosen subset of seeds).
    `num_runs` sizes groups and the evaluation batch to the device's memory under the accelerator
    policy (`memory.py`); None leaves them."""
    steps_per_epoch = num_train // config.batch_size
    plan = execution.plan(
        config, steps_per_epoch=steps_per_epoch, backend=backend,
        step_bytes=lambda p: execution.model_step_bytes(_model_builder(config, image_shape, num_classes, p),
                                                        (config.batch_size, *image_shape)),
        batch_separable=lambda p: execution.batch_separable(_model_builder(config, image_shape, num_classes, p)))
    build = _model_builder(config, image_shape, num_classes, plan)
    abstract = nnx.eval_shape(lambda: build(jax.random.key(0), jax.random.key(0)))
    if "dropout_rate" in config.hparam_grid and not jax.tree.leaves(nnx.state(abstract, DropoutRate)):
        raise ConfigError(f"hparam_grid.dropout_rate needs dropout layers, but model.dropout_placement="
                          f"{config.model.dropout_placement!r} places none; choose conv, dense, all or head")
    abstract.train()
    train_graph = nnx.split(abstract)[0]
    abstract.eval()
    ctx = step.StepContext(config=config, build=build, train_graph=train_graph, eval_graph=nnx.split(abstract)[0],
                           num_classes=num_classes, num_train=num_train, steps_per_epoch=steps_per_epoch)

    if num_runs is not None and plan.policy == "accelerator" and not int(config.execution.runs_per_group):
        plan = _sized_to_memory(config, ctx, plan, num_runs, (num_train, *image_shape))
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
        eval_graph=ctx.eval_graph,
        layer_names=tuple(metrics.layer_names(nnx.state(abstract, nnx.Param))),
        steps_per_epoch=steps_per_epoch,
        plan=plan,
        stream_layout=layout,
    )


def _sized_to_memory(config: ml_collections.ConfigDict, ctx: step.StepContext, plan: execution.ExecutionPlan,
                     num_runs: int, data_shape: tuple[int, ...]) -> execution.ExecutionPlan:
    """The plan with groups and evaluation batch from one run's compiled chunk and eval batch
    (`memory.py`); unchanged where the device reports no limit and the config sets none."""
    limit = memory.device_limit(config)
    if limit is None:
        return plan
    chunk = functools.partial(_local_train_steps, ctx, None, dataclasses.replace(plan, mesh=None, runs_per_group=None),
                              length=1)
    measured = memory.measure(config, ctx, data_shape, chunk, zero_sums)
    return memory.sized(plan, measured, num_runs, limit, int(config.eval_batch_size))


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
               seed_index: np.ndarray | None = None) -> RunSetup:
    """The one place that turns a config into runs: grid, program, per-run hparams and keys (folds
    included). `grid`: the run grid `validation.validate_config` built for this config (None:
    validate it here). `abstract=True` only traces `init` (validating the optimizer chain) and
    returns the state's shapes (`trace_job` then traces a step and an eval); `seed_index` trains
    just those seeds of the first setting and fold (tests that compare a seed alone with the batch)."""
    if grid is None:
        grid = validation.validate_config(config, image_shape, num_classes, num_train)
    program = make_train(config, image_shape, num_classes, num_train,
                         grid=grid if seed_index is None else None,
                         num_runs=grid.num_runs if seed_index is None else len(seed_index))
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


def trace_job(setup: RunSetup, image_shape: tuple[int, int, int], num_train: int, eval_batch_size: int) -> None:
    """Evaluates one train-steps call and one eval call abstractly (a trace, no compile) on the
    job's real shapes, so every error a trace raises (a stream layout that does not fit the runs,
    reflect padding larger than the image, ...) fires before the workdir is claimed."""
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
    jax.eval_shape(program.eval_batch, state, setup.hparams, eval_images, eval_labels,
                   jax.ShapeDtypeStruct((count, eval_batch_size), jnp.float32))


def zero_sums(num_runs: int, layer_names: tuple[str, ...]) -> step.EpochSums:
    """An epoch's sums before its first step."""
    zeros = lambda: jnp.zeros((num_runs,), jnp.float32)  # noqa: E731 -- a new buffer per leaf: sums are donated
    return step.EpochSums(**{name: zeros() for name in step.EpochSums._fields if name != "grad_norm"},
                     grad_norm={layer: zeros() for layer in layer_names})


def train_epoch(program: Program, state: step.TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                epoch: int, train_index: jax.Array | None = None,
                on_chunk: Callable[[int, step.TrainState, step.EpochSums], bool | None] | None = None,
                start: int = 0, sums: step.EpochSums | None = None, clock: chunks.ChunkClock | None = None
                ) -> tuple[step.TrainState, step.EpochSums, int]:
    """Runs one epoch (from step `start`, adding to `sums` when resuming inside it) as calls of
    the compiled step chunk, each bounded in time by `clock` (one per job; a fresh one by
    default); returns the state, the sums and the steps done, all steps finished.

    `train_index` (runs, n) gives each run its own training examples (cross-validation folds);
    by default every run trains on all of `images`. `on_chunk(steps_done, state, sums)` runs
    between chunks (progress, mid-epoch checkpoints); returning True stops the epoch there."""
    clock = clock or chunks.ChunkClock(program.plan, program.steps_per_epoch)
    clock.start_epoch()
    num_runs = state.step.shape[0]
    if train_index is None:
        train_index = jnp.broadcast_to(jnp.arange(images.shape[0]), (num_runs, images.shape[0]))
    batches = program.epoch_batches(state, jnp.int32(epoch), train_index)  # a function of the data key and epoch
    sums = zero_sums(num_runs, program.layer_names) if sums is None else sums
    while start < program.steps_per_epoch:
        length = clock.next_length(program.steps_per_epoch - start)
        started = clock.before_call(length)
        state, sums = program.train_steps(state, hparams, images, labels, batches, jnp.int32(start), sums,
                                          length=length)
        clock.after_call(length, started, state.step)
        start += length
        if on_chunk is not None and on_chunk(start, state, sums) and start < program.steps_per_epoch:
            break
    clock.wait()
    return state, sums, start


def score_split(program: Program, state: step.TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                batch_size: int, *, weights: jax.Array | None = None, return_probs: bool = False
                ) -> dict[str, np.ndarray]:
    """Per-run loss, accuracy, macro-F1, per-class accuracy and confusion matrix on one split.

    `weights` (runs, n) of 0/1 restricts each run to its own examples (its held-out fold)."""
    num_runs = state.step.shape[0]
    if weights is None:
        weights = jnp.ones((num_runs, images.shape[0]), jnp.float32)
    confusion, loss_sum, probs = 0.0, 0.0, []
    for start in range(0, images.shape[0], batch_size):
        batch = slice(start, start + batch_size)
        batch_confusion, batch_loss, batch_probs = program.eval_batch(
            state, hparams, images[batch], labels[batch], weights[:, batch])
        confusion, loss_sum = confusion + batch_confusion, loss_sum + batch_loss
        if return_probs:
            probs.append(batch_probs)
    confusion, loss_sum = (np.asarray(x) for x in execution.replicate((confusion, loss_sum), program.plan))
    result = metrics.classification_metrics(confusion, loss_sum)
    result["confusion"] = confusion
    if return_probs:
        result["probs"] = np.concatenate([np.asarray(p) for p in execution.replicate(probs, program.plan)], axis=1)
    return result


class ResumePoint(NamedTuple):
    """Where a job continues: the state after the last checkpointed step, the records so far and,
    for a mid-epoch checkpoint, the step within the epoch and that epoch's sums."""

    state: step.TrainState
    history: list[dict]
    diverged_by_epoch: list[list[bool]]
    wall_time_s: float
    step: int = 0
    sums: step.EpochSums | None = None


def _initial_state(setup: RunSetup, config: ml_collections.ConfigDict, workdir: str) -> step.TrainState:
    """A fresh state; with `init_from`, the parameters and batch statistics of that workdir's latest
    checkpoint (run i from run i), so a chain of jobs can continue one model without re-initializing
    it (study 002's leaky k-fold). Optimizer, step, dropout and data streams stay fresh."""
    state = setup.init()
    if not config.get("init_from"):
        return state
    path = os.path.normpath(os.path.join(workdir, config.init_from))  # relative: to this run's workdir
    source = setup.on_devices(warm_start_state(path, setup.checkpoint_like(), config.checkpoint.best_metric,
                                               setup.num_runs))
    batch_stats = jax.tree.map(lambda fresh, old: old if isinstance(fresh, nnx.BatchStat) else fresh,
                               state.model_state, source.model_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return state._replace(params=source.params, model_state=batch_stats)


def _resume_point(setup: RunSetup, checkpoints: Checkpoints, workdir: str,
                  fresh: Callable[[], step.TrainState]) -> ResumePoint:
    """The newest usable checkpoint, a whole epoch's or a mid-epoch one, placed on the devices,
    with the records of its epochs (from metrics.jsonl); `fresh()` when there is none."""
    restored = checkpoints.restore(setup.checkpoint_like(), num_runs=setup.num_runs)
    partial = checkpoints.restore_partial(setup.checkpoint_like(), num_runs=setup.num_runs)
    whole_epochs = 0 if restored is None else _epochs_done(restored[2])
    if partial is not None and partial[1]["epoch"] > whole_epochs:
        state, meta = partial
        return ResumePoint(setup.on_devices(state), *_history(meta, workdir, setup.grid), meta["wall_time_s"],
                           meta["step"], setup.on_devices(step.EpochSums.from_json(meta["sums"])))
    if restored is None:
        return ResumePoint(fresh(), [], [], 0.0)
    _, state, meta = restored
    return ResumePoint(setup.on_devices(state), *_history(meta, workdir, setup.grid), meta["wall_time_s"])


def _epochs_done(meta: dict) -> int:
    """Whole epochs a checkpoint holds ('history' in the meta of earlier versions' checkpoints)."""
    return int(meta["epochs_done"]) if "epochs_done" in meta else len(meta["history"])


def _history(meta: dict, workdir: str, grid: runs.RunGrid) -> tuple[list[dict], list[list[bool]]]:
    """(records, diverged per epoch) of the whole epochs before a checkpoint: read back from
    metrics.jsonl, so a checkpoint's meta stays the same size however many epochs ran."""
    if "history" in meta:  # written by an earlier version
        return meta["history"], meta["diverged"]
    return progress.read_history(workdir, int(meta["epochs_done"]), grid.ids())


def _chunk_hook(setup: RunSetup, checkpoints: Checkpoints, loop: progress.TrainingLog, stop: interrupts.StopFlag,
                epoch: int, records: Callable[[], dict]) -> Callable[[int, step.TrainState, step.EpochSums], bool]:
    """Between chunks: progress, and a mid-epoch checkpoint when the run is asked to stop or
    `checkpoint.every_minutes` have passed since the last save; returns whether to stop."""
    show = loop.chunk_callback(epoch)
    every_s = 60.0 * float(loop.config.checkpoint.every_minutes)

    def hook(done: int, state: step.TrainState, sums: step.EpochSums) -> bool:
        show(done, state)
        if loop.config.get("log_step_metrics", False):
            loop.step_metrics(epoch, done, setup.real_runs(sums))
        halt, save = stop.poll(save_due=0 < every_s <= time.time() - checkpoints.last_save_time)
        if halt or save:
            checkpoints.save_partial((epoch - 1) * setup.program.steps_per_epoch + done, state,
                                     {**records(), "epoch": epoch, "step": done,
                                      "sums": setup.real_runs(sums).to_json()}, num_runs=setup.num_runs)
        return halt
    return hook


def _refuse_another_dtype(workdir: str, plan: execution.ExecutionPlan) -> None:
    """A resume must compute in the dtype the run began with (e.g. not float32 on CPU, then
    bfloat16 on a GPU), or its numbers belong to no one setting."""
    stored = (workdir_lib.load_json(workdir, workdir_lib.DATA_FILE) or {}).get("plan") or {}
    if stored.get("compute_dtype", plan.compute_dtype) != plan.compute_dtype:
        raise CheckpointError(f"{workdir} was trained in {stored['compute_dtype']} ({stored.get('backend')}), this "
                              f"job would resume it in {plan.compute_dtype} ({plan.backend}); set "
                              f"--config.execution.compute_dtype={stored['compute_dtype']}, or use another --workdir")


def _best_runs(config: ml_collections.ConfigDict, setup: RunSetup, checkpoints: Checkpoints, evals: dict,
               history: list[dict], state: step.TrainState) -> best_runs.BestRuns | None:
    """Each run's best weights, kept while the test split waits for the end of the job (None when
    test is scored every epoch, or there is none); a resumed job's from its checkpoints."""
    if "test" not in evals or best_runs.test_every_epoch(config, evals):
        return None
    metric = config.checkpoint.best_metric
    best = best_runs.BestRuns(metric if metric in results.BEST_METRICS else "val_accuracy", setup.on_devices)
    best.resume(history, state, lambda epoch: checkpoints.restore(setup.checkpoint_like(), which=str(epoch),
                                                                  num_runs=setup.num_runs)[1])
    return best


def _claim(config: ml_collections.ConfigDict, workdir: str, setup: RunSetup, splits: Any,
           primary: bool) -> tuple[Checkpoints, ResumePoint]:
    """Takes the workdir: refuses another config's run or another dtype (writing nothing), finds
    where to resume (an unusable checkpoint or init_from source fails here, config.json
    untouched), then writes config.json and data.json (with the resolved plan)."""
    def make_room() -> None:  # refuses a workdir of another config, writing nothing
        workdir_lib.make_room(workdir, config)
        _refuse_another_dtype(workdir, setup.program.plan)
    execution.primary_decides(make_room)  # every process ends with process 0's refusal
    checkpoints = Checkpoints(workdir, keep=config.checkpoint.keep, best_metric=config.checkpoint.best_metric)
    resume = _resume_point(setup, checkpoints, workdir, lambda: _initial_state(setup, config, workdir))
    if primary:
        workdir_lib.write_run_files(workdir, config, {"image_shape": list(splits.image_shape), "num_train":
                                                      splits.num_train, "class_names": list(splits.class_names),
                                                      "plan": execution.plan_record(setup.program.plan)})
    return checkpoints, resume


def _placed_data(splits: Any, setup: RunSetup) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """Training images and labels, each run's training index and the evaluation splits (examples,
    per-run weights), on the devices."""
    plan = setup.program.plan
    images, labels = execution.replicate(tuple(splits.train), plan)
    evals = {name: (execution.replicate(tuple(examples), plan), setup.on_devices(weights))
             for name, (examples, weights) in ((n, examples_for(splits, setup.grid, n)) for n in splits.eval)}
    return images, labels, setup.on_devices(run_train_index(splits, setup.grid)), evals


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) every run of `config`, evaluating each epoch, checkpointing, and writing
    metrics.jsonl, TensorBoard events and results.json into `workdir`. SIGTERM or Ctrl-C stop it
    at the next step boundary with a checkpoint (`errors.Interrupted`)."""
    splits, grid = validation.load_checked_splits(config)  # before touching the workdir: a bad start changes nothing
    setup = setup_runs(config, splits.image_shape, len(splits.class_names), splits.num_train, grid=grid,
                       abstract=True)
    trace_job(setup, splits.image_shape, splits.num_train, setup.program.plan.eval_batch_size)
    primary = execution.is_primary()  # process 0 writes everything but the checkpoints
    checkpoints, resume = _claim(config, workdir, setup, splits, primary)
    loop = progress.TrainingLog(workdir, config, setup.grid, splits, setup.program, is_primary=primary)
    state, history, diverged_by_epoch = resume.state, resume.history, resume.diverged_by_epoch
    loop.start(resumed_after=len(history), step=resume.step)
    session_start = time.time()
    # What resume needs besides metrics.jsonl (written before each checkpoint): constant in size.
    records = lambda: {"epochs_done": len(history),  # noqa: E731
                       "wall_time_s": resume.wall_time_s + time.time() - session_start}
    plan = setup.program.plan
    images, labels, train_index, evals = _placed_data(splits, setup)
    resumed_epoch = len(history) + 1  # resume.step and resume.sums belong to it
    clock = chunks.ChunkClock(plan, setup.program.steps_per_epoch)
    loop.compiling(clock)
    best = _best_runs(config, setup, checkpoints, evals, history, state)
    grace_s = float(config.execution.get("stop_grace_s", interrupts.DEFAULT_GRACE_S))
    with interrupts.stop_on_signals(grace_s) as stop:
        for epoch in range(resumed_epoch, config.num_epochs + 1):
            start, sums = (resume.step, resume.sums) if epoch == resumed_epoch else (0, None)
            state, sums, done = train_epoch(setup.program, state, setup.hparams, images, labels, epoch, train_index,
                                            _chunk_hook(setup, checkpoints, loop, stop, epoch, records), start, sums,
                                            clock)
            loop.trained(clock)
            if done < setup.program.steps_per_epoch:
                checkpoints.wait()
                checkpoints.close()
                loop.close()
                raise Interrupted(f"{stop.reason()} at epoch {epoch} step {done}; rerun the same command to "
                                             "resume", stop.exit_code())
            scores = {name: setup.real_runs(score_split(setup.program, state, setup.hparams, *evals[name][0],
                                                        plan.eval_batch_size, weights=evals[name][1]))
                      for name in best_runs.splits_to_score(config, evals, epoch)}
            diverged = np.asarray(setup.real_runs(state.diverged))
            record = results.epoch_record(setup.real_runs(sums)._asdict(), scores, diverged)
            history.append(results.jsonable(record))
            diverged_by_epoch.append(diverged.tolist())
            if best is not None:
                best.update(epoch, record, state)
            loop.end_epoch(epoch, record, history, diverged_by_epoch)  # metrics.jsonl before the checkpoint
            if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
                checkpoints.save(epoch, state, records(), results.mean_over_runs(record, config.checkpoint.best_metric),
                                 num_runs=setup.num_runs)  # sharded and padded as trained: nothing gathered
                checkpoints.drop_partial()
    checkpoints.wait()
    checkpoints.close()
    best_test = None if best is None else best.best_scores(
        config.num_epochs, {name: history[-1][f"test_{name}"] for name in results.RECORDED_EVAL_METRICS},
        lambda: setup.real_runs(score_split(setup.program, best.state(state), setup.hparams, *evals["test"][0],
                                            plan.eval_batch_size, weights=evals["test"][1])))
    summary = results.summarize_results(config, setup.grid, history, np.asarray(diverged_by_epoch[-1]),
                                        records()["wall_time_s"], best_test)
    summary["plan"] = execution.plan_record(plan)
    if primary:
        workdir_lib.write_json_atomic(os.path.join(workdir, "results.json"), summary)
    loop.finish(summary, checkpoints)
    return summary
