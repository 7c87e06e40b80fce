"""The training program: pure step functions over a batch of runs, and the loop that drives them.

A *run* is one model (`runs.py`). All runs of a config share one compiled program:
`make_train(config, ...)` resolves everything static (shapes, model, optimizer structure,
augmentation, the execution plan) and returns jitted functions whose leading axis is the run axis
(`jax.vmap`); hyperparameters that do not change shapes are inputs, so `num_seeds x hparam_grid`
trains at once. `train_step` / `eval_step` are module-level pure functions of a `StepContext`.
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
import optax
from flax import nnx

from cifar_jax import augment, checks, data, execution, losses, metrics, models, optim, progress, results, runs
from cifar_jax import workdir as workdir_lib
from cifar_jax.checkpoint import Checkpoints
from cifar_jax.errors import ConfigError
from cifar_jax.models.layers import DropoutRate
from cifar_jax.splits import Splits, examples_for, prepare_splits, run_train_index, standardize, to_unit


class TrainState(NamedTuple):
    """Everything one run carries from step to step (and into a checkpoint)."""

    params: nnx.State
    model_state: nnx.State  # batch statistics, dropout RNG stream, dropout rate
    opt_state: optax.OptState
    data_key: jax.Array  # raw key data: shuffling and augmentation derive from it by fold_in
    step: jax.Array
    diverged: jax.Array  # sticky: the loss was NaN/inf at some step


class EpochSums(NamedTuple):
    """Training metrics accumulated on the device over the steps of one epoch."""

    loss: jax.Array
    correct: jax.Array
    count: jax.Array
    steps: jax.Array
    dead_fraction: jax.Array  # summed over steps
    grad_norm: dict[str, jax.Array]  # per layer, summed over steps


@dataclasses.dataclass(frozen=True)
class StepContext:
    """The static pieces one run's step needs: everything that is not a traced input."""

    config: ml_collections.ConfigDict
    build: Callable[[jax.Array, jax.Array], nnx.Module]  # (params key, dropout key) -> model
    train_graph: nnx.GraphDef
    eval_graph: nnx.GraphDef
    num_classes: int
    num_train: int
    steps_per_epoch: int

    @property
    def use_mixup(self) -> bool:  # static: Beta sampling is costly to compile, so it is left out when off
        return self.config.augment.mixup_alpha > 0 or "mixup_alpha" in self.config.hparam_grid

    def optimizer(self, hparams: dict | None) -> optax.GradientTransformation:
        return optim.make_optimizer(self.config.optim, hparams, steps_per_epoch=self.steps_per_epoch,
                                    num_epochs=self.config.num_epochs)


def _data_streams(data_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(shuffle root, augmentation root): independent streams, so turning augmentation on or off
    never changes a run's data order."""
    shuffle_root, augment_root = jax.random.split(jax.random.wrap_key_data(data_key))
    return shuffle_root, augment_root


def init_run(ctx: StepContext, run_key: jax.Array, hparams: dict) -> TrainState:
    params_key, dropout_key, data_key = jax.random.split(jax.random.wrap_key_data(run_key), 3)
    model = ctx.build(params_key, dropout_key)
    nnx.update(model, jax.tree.map(lambda _: hparams["dropout_rate"], nnx.state(model, DropoutRate)))
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    return TrainState(params=params, model_state=model_state, opt_state=ctx.optimizer(hparams).init(params),
                      data_key=jax.random.key_data(data_key), step=jnp.zeros((), jnp.int32),
                      diverged=jnp.zeros((), bool))


def epoch_batches(ctx: StepContext, state: TrainState, epoch: jax.Array, train_index: jax.Array) -> jax.Array:
    """The epoch's batches as index rows; the last partial batch is dropped (PyTorch's DataLoader
    keeps it by default: with the studies' batch sizes that is at most one small batch an epoch)."""
    key = jax.random.fold_in(_data_streams(state.data_key)[0], epoch)
    order = train_index[jax.random.permutation(key, ctx.num_train)]
    batch_size = ctx.config.batch_size
    return order[: ctx.steps_per_epoch * batch_size].reshape(ctx.steps_per_epoch, batch_size)


def train_step(ctx: StepContext, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
               batch_index: jax.Array) -> tuple[TrainState, EpochSums]:
    """One SGD step of one run: augment, (mix up), standardize, forward, backward, update."""
    augment_key, mixup_key = jax.random.split(jax.random.fold_in(_data_streams(state.data_key)[1], state.step))
    x = augment.augment_batch(ctx.config.augment, augment_key, to_unit(images[batch_index]), hparams)
    y = labels[batch_index]
    targets = losses.smooth_labels(jax.nn.one_hot(y, ctx.num_classes), hparams["label_smoothing"])
    if ctx.use_mixup:
        x, targets = augment.mixup(mixup_key, x, targets, hparams["mixup_alpha"])
    x = standardize(x, hparams["mean"], hparams["std"])

    def loss_fn(params):
        model = nnx.merge(ctx.train_graph, params, state.model_state, copy=True)
        logits, intermediates = nnx.capture(model, nnx.Intermediate)(x)
        logits = logits.astype(jnp.float32)
        new_model_state = nnx.state(model, nnx.Not(nnx.Param))
        loss = losses.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, new_model_state, metrics.dead_unit_fraction(intermediates))

    (loss, (logits, model_state, dead)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = ctx.optimizer(hparams).update(grads, state.opt_state, state.params)
    new_state = TrainState(params=optax.apply_updates(state.params, updates), model_state=model_state,
                           opt_state=opt_state, data_key=state.data_key, step=state.step + 1,
                           diverged=state.diverged | ~jnp.isfinite(loss))
    batch_size = ctx.config.batch_size
    step_sums = EpochSums(loss=loss * batch_size, correct=jnp.sum(jnp.argmax(logits, -1) == y),
                          count=jnp.float32(batch_size), steps=jnp.float32(1), dead_fraction=dead,
                          grad_norm=metrics.layer_gradient_norms(grads))
    return new_state, step_sums


def train_chunk(ctx: StepContext, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                batches: jax.Array, start: jax.Array, sums: EpochSums, *, length: int) -> tuple[TrainState, EpochSums]:
    """`length` consecutive steps of one run from batch `start`, added to `sums`."""
    chunk = jax.lax.dynamic_slice_in_dim(batches, start, length, axis=0)
    step = functools.partial(train_step, ctx, hparams=hparams, images=images, labels=labels)
    if length == 1:  # a bare step: XLA:CPU runs convolutions inside loop bodies slowly
        state, chunk_sums = step(state, batch_index=chunk[0])
    else:
        state, per_step = jax.lax.scan(lambda s, b: step(s, batch_index=b), state, chunk)
        chunk_sums = jax.tree.map(lambda v: v.sum(axis=0), per_step)
    return state, jax.tree.map(jnp.add, sums, chunk_sums)


def eval_step(ctx: StepContext, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
              weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Confusion counts, loss sum and probabilities of one run on one batch; `weights` (0/1 per
    example) select the run's own examples, e.g. its held-out fold."""
    model = nnx.merge(ctx.eval_graph, state.params, state.model_state, copy=True)
    logits = model(standardize(to_unit(images), hparams["mean"], hparams["std"])).astype(jnp.float32)
    loss_sum = (weights * losses.softmax_cross_entropy(logits, jax.nn.one_hot(labels, ctx.num_classes))).sum()
    confusion = metrics.confusion_matrix(labels, jnp.argmax(logits, -1), ctx.num_classes, weights)
    return confusion, loss_sum, jax.nn.softmax(logits)


@dataclasses.dataclass(frozen=True)
class Program:
    """The compiled pieces of one config; every function maps over the leading run axis."""

    init: Callable[[jax.Array, dict], TrainState]
    epoch_batches: Callable[[TrainState, jax.Array, jax.Array], jax.Array]
    train_steps: Callable[..., tuple[TrainState, EpochSums]]
    eval_batch: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
    eval_graph: nnx.GraphDef  # the model in eval mode, for merging a run's state into a module
    layer_names: tuple[str, ...]  # the layers whose gradient norms are reported
    steps_per_epoch: int
    plan: execution.ExecutionPlan


def _model_builder(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
                   plan: execution.ExecutionPlan) -> Callable[[jax.Array, jax.Array], nnx.Module]:
    model_config = config.model.copy_and_resolve_references()
    model_config.dropout_rate = runs.built_dropout_rate(config)

    def build(params_key: jax.Array, dropout_key: jax.Array) -> nnx.Module:
        return models.create_model(model_config, input_shape=image_shape, num_classes=num_classes,
                                   rngs=nnx.Rngs(params=params_key, dropout=dropout_key),
                                   conv_impl=plan.conv_impl, dtype=plan.compute_dtype)
    return build


def _step_residual_bytes(build, batch_shape: tuple[int, ...]) -> int:
    """Activations one run's training step keeps for its backward pass, from shapes alone."""
    abstract = nnx.eval_shape(lambda: build(jax.random.key(0), jax.random.key(0)))
    train_graph, params, model_state = nnx.split(abstract, nnx.Param, ...)

    def forward(params, model_state, images):
        return nnx.merge(train_graph, params, model_state, copy=True)(images).sum()

    return execution.residual_bytes(forward, params, model_state, jax.ShapeDtypeStruct(batch_shape, jnp.float32))


def validate_config(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
                    num_train: int) -> None:
    """Every static check of a config, reporting all failures at once; traced checks (augmentation
    on these image sizes, the optimizer chain) run in `setup_runs` by abstract evaluation."""
    checks.all_of(
        lambda: models.validate_model_config(config.model, image_shape, num_classes),
        *(lambda f=f: checks.positive_int(config, f) for f in ("num_epochs", "checkpoint_every_epochs",
                                                                 "eval_batch_size", "batch_size")),
        lambda: _check_batch_fits(config, num_train),
        lambda: optim.check_config(config.optim, steps_per_epoch=max(num_train // config.batch_size, 1),
                                   num_epochs=max(int(config.num_epochs), 1)),
        lambda: augment.check_config(config.augment),
        lambda: runs.make_run_grid(config, image_shape[-1]),
        lambda: execution.validate(config),
    )


def _check_batch_fits(config: ml_collections.ConfigDict, num_train: int) -> None:
    if isinstance(config.batch_size, int) and config.batch_size > num_train:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {num_train} training images of one run; "
                          "lower batch_size or raise data.train_limit")


def make_train(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
               num_train: int, backend: str | None = None) -> Program:
    """Resolves the static parts of `config` and returns the jitted, run-vmapped functions."""
    validate_config(config, image_shape, num_classes, num_train)
    steps_per_epoch = num_train // config.batch_size
    plan = execution.plan(config, steps_per_epoch=steps_per_epoch, backend=backend,
                          step_bytes=lambda p: _step_residual_bytes(_model_builder(config, image_shape, num_classes, p),
                                                                    (config.batch_size, *image_shape)))
    build = _model_builder(config, image_shape, num_classes, plan)
    abstract = nnx.eval_shape(lambda: build(jax.random.key(0), jax.random.key(0)))
    if "dropout_rate" in config.hparam_grid and not jax.tree.leaves(nnx.state(abstract, DropoutRate)):
        raise ConfigError(f"hparam_grid.dropout_rate needs dropout layers, but model.dropout_placement="
                          f"{config.model.dropout_placement!r} places none; choose conv, dense, all or head")
    abstract.train()
    train_graph = nnx.split(abstract)[0]
    abstract.eval()
    ctx = StepContext(config=config, build=build, train_graph=train_graph, eval_graph=nnx.split(abstract)[0],
                      num_classes=num_classes, num_train=num_train, steps_per_epoch=steps_per_epoch)

    def train_steps(state, hparams, images, labels, batches, start, sums, *, length: int):
        run = functools.partial(train_chunk, ctx, length=length)
        return execution.map_over_runs(run, (0, 0, None, None, 0, None, 0), plan.runs_per_group)(
            state, hparams, images, labels, batches, start, sums)

    # Run once per job or epoch: XLA's optimizer would cost seconds of compile time for nothing.
    run_once = {"xla_backend_optimization_level": 0}
    return Program(
        init=jax.jit(jax.vmap(functools.partial(init_run, ctx)), compiler_options=run_once),
        epoch_batches=jax.jit(jax.vmap(functools.partial(epoch_batches, ctx), in_axes=(0, None, 0)),
                              compiler_options=run_once),
        train_steps=jax.jit(train_steps, static_argnames="length", donate_argnums=(0, 6)),
        eval_batch=jax.jit(jax.vmap(functools.partial(eval_step, ctx), in_axes=(0, 0, None, None, 0))),
        eval_graph=ctx.eval_graph,
        layer_names=tuple(metrics.layer_names(nnx.state(abstract, nnx.Param))),
        steps_per_epoch=steps_per_epoch,
        plan=plan,
    )


class RunSetup(NamedTuple):
    """Everything a job needs before its first step: which runs, their program and initial state."""

    grid: runs.RunGrid
    program: Program
    hparams: dict[str, jax.Array]
    state: TrainState  # concrete, or abstract (`jax.ShapeDtypeStruct`s) when only the structure is needed


def setup_runs(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
               num_train: int, *, abstract: bool = False, seed_index: np.ndarray | None = None) -> RunSetup:
    """The one place that turns a config into runs: grid, program, per-run hparams and keys (folds
    included). `abstract=True` only traces `init` (validating the optimizer chain) and returns
    the state's shapes; `seed_index` trains just those seeds of the first setting and fold (tests
    that compare a seed alone with the batch)."""
    grid = runs.make_run_grid(config, image_shape[-1])
    program = make_train(config, image_shape, num_classes, num_train)
    if seed_index is None:
        seeds, folds, count = grid.seed_index, grid.fold_index, grid.num_runs
    else:
        seeds, count = np.asarray(seed_index), len(seed_index)
        folds = np.zeros_like(seeds)
    hparams = jax.tree.map(lambda v: jnp.asarray(v[:count]), grid.hparams)
    keys = runs.run_keys(config.seed, seeds, folds)
    state = jax.eval_shape(program.init, keys, hparams) if abstract else program.init(keys, hparams)
    return RunSetup(grid=grid, program=program, hparams=hparams, state=state)


def zero_sums(num_runs: int, layer_names: tuple[str, ...]) -> EpochSums:
    """An epoch's sums before its first step."""
    zeros = lambda: jnp.zeros((num_runs,), jnp.float32)  # noqa: E731 -- a new buffer per leaf: sums are donated
    return EpochSums(**{name: zeros() for name in EpochSums._fields if name != "grad_norm"},
                     grad_norm={layer: zeros() for layer in layer_names})


def train_epoch(program: Program, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                epoch: int, train_index: jax.Array | None = None,
                on_chunk: Callable[[int, TrainState], None] | None = None) -> tuple[TrainState, EpochSums]:
    """Runs one epoch as `steps_per_epoch / steps_per_call` calls of the compiled step chunk.

    `train_index` (runs, n) gives each run its own training examples (cross-validation folds);
    by default every run trains on all of `images`. `on_chunk(steps_done, state)` runs between
    chunks (progress); it must not block unless it means to."""
    num_runs = state.step.shape[0]
    if train_index is None:
        train_index = jnp.broadcast_to(jnp.arange(images.shape[0]), (num_runs, images.shape[0]))
    batches = program.epoch_batches(state, jnp.int32(epoch), train_index)
    sums = zero_sums(num_runs, program.layer_names)
    start = 0
    while start < program.steps_per_epoch:
        length = min(program.plan.steps_per_call, program.steps_per_epoch - start)
        state, sums = program.train_steps(state, hparams, images, labels, batches, jnp.int32(start), sums,
                                          length=length)
        start += length
        if on_chunk is not None:
            on_chunk(start, state)
    return state, sums


def score_split(program: Program, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
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
    confusion = np.asarray(confusion)
    result = metrics.classification_metrics(confusion, np.asarray(loss_sum))
    result["confusion"] = confusion
    if return_probs:
        result["probs"] = np.concatenate([np.asarray(p) for p in probs], axis=1)
    return result


def load_checked_splits(config: ml_collections.ConfigDict) -> Splits:
    """The job's data, and every config problem reported in one round: a data-size refusal (e.g.
    val_size larger than train_limit) comes together with the config's other problems."""
    try:
        splits = prepare_splits(config.data)
    except ConfigError as data_problem:
        name = data.check_name(config.data.name)
        guess = max(int(config.data.train_limit or 0), int(config.batch_size or 1) if
                    isinstance(config.batch_size, int) else 1)
        problems = [str(data_problem)]
        try:
            validate_config(config, data.IMAGE_SHAPES[name], len(data.CLASS_NAMES[name]), guess)
        except ConfigError as others:
            problems.append(str(others))
        raise ConfigError("\n".join(problems)) from None
    validate_config(config, splits.image_shape, len(splits.class_names), splits.num_train)
    return splits


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) every run of `config`, evaluating each epoch, checkpointing, and writing
    metrics.jsonl, TensorBoard events and results.json into `workdir`."""
    splits = load_checked_splits(config)  # before touching the workdir: a bad start changes nothing
    num_classes = len(splits.class_names)
    setup = setup_runs(config, splits.image_shape, num_classes, splits.num_train, abstract=True)
    data_meta = {"image_shape": list(splits.image_shape), "class_names": list(splits.class_names),
                 "num_train": splits.num_train}
    workdir_lib.claim(workdir, config, data_meta)  # refuses a workdir of another config before writing anything
    state = setup.program.init(setup.grid.keys(config.seed), setup.hparams)
    loop = progress.TrainingLog(workdir, config, setup.grid, splits, setup.program)
    checkpoints = Checkpoints(workdir, keep=config.checkpoint.keep, best_metric=config.checkpoint.best_metric)
    restored = checkpoints.restore(state)
    history, diverged_by_epoch, elapsed = [], [], 0.0
    if restored is not None:
        _, state, meta = restored
        history, diverged_by_epoch, elapsed = meta["history"], meta["diverged"], meta["wall_time_s"]
    loop.start(resumed_after=len(history))
    session_start = time.time()
    train_index = run_train_index(splits, setup.grid)
    evals = {name: examples_for(splits, setup.grid, name) for name in splits.eval}
    for epoch in range(len(history) + 1, config.num_epochs + 1):
        state, sums = train_epoch(setup.program, state, setup.hparams, *splits.train, epoch, train_index,
                                  on_chunk=loop.chunk_callback(epoch))
        scores = {name: score_split(setup.program, state, setup.hparams, *examples, config.eval_batch_size,
                                    weights=weights) for name, (examples, weights) in evals.items()}
        diverged = np.asarray(state.diverged)
        record = results.epoch_record(sums._asdict(), scores, diverged)
        history.append(results.jsonable(record))
        diverged_by_epoch.append(diverged.tolist())
        if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
            meta = {"history": history, "diverged": diverged_by_epoch,
                    "wall_time_s": elapsed + time.time() - session_start}
            checkpoints.save(epoch, state, meta, results.mean_over_runs(record, config.checkpoint.best_metric))
        loop.end_epoch(epoch, record, history, diverged_by_epoch)
    checkpoints.wait()
    checkpoints.close()
    summary = results.summarize_results(config, setup.grid, history, np.asarray(diverged_by_epoch[-1]),
                                        elapsed + time.time() - session_start)
    workdir_lib.write_json_atomic(os.path.join(workdir, "results.json"), summary)
    loop.finish(summary, checkpoints)
    return summary
