"""One run's training and evaluation steps as pure functions of a `StepContext`.

`job/program.py`'s `make_train` vmaps them over the run axis (and shards them over devices) and jits them; on
their own they are plain functions of one run's state, easy to test and to read.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cifar_jax.core import augment
from cifar_jax.core import execution
from cifar_jax.core import losses
from cifar_jax.core import metrics
from cifar_jax.core import optim
from cifar_jax.models.layers import DropoutRate
from cifar_jax.core.splits import standardize, to_unit


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

    def to_json(self) -> dict:
        """Exact as JSON: float32 values survive the round trip through Python floats."""
        return {name: ({k: np.asarray(v).tolist() for k, v in value.items()} if name == "grad_norm"
                       else np.asarray(value).tolist()) for name, value in self._asdict().items()}

    @classmethod
    def from_json(cls, payload: dict) -> "EpochSums":
        return cls(**{name: ({k: np.asarray(v, np.float32) for k, v in value.items()} if name == "grad_norm"
                             else np.asarray(value, np.float32)) for name, value in payload.items()})


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


def init_run(ctx: StepContext, keys: jax.Array, hparams: dict) -> TrainState:
    """A run's initial state. `keys` holds two key data: the run's own (parameters, dropout) and
    the one its data stream (order, augmentation) derives from: the same unless data.shared_order."""
    params_key, dropout_key, _ = jax.random.split(jax.random.wrap_key_data(keys[0]), 3)
    data_key = jax.random.split(jax.random.wrap_key_data(keys[1]), 3)[2]
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


class Batch(NamedTuple):
    """One step's training inputs: what every run of a data stream shares unless a traced grid
    value (label smoothing, mixup) makes it per run."""

    x: jax.Array  # augmented, (mixed,) standardized images
    labels: jax.Array
    targets: jax.Array  # smoothed (mixed) one-hot targets


def batch_inputs(ctx: StepContext, data_key: jax.Array, step: jax.Array, hparams: dict, images: jax.Array,
                 labels: jax.Array, batch_index: jax.Array) -> Batch:
    """Augment, (mix up) and standardize one batch: a function of the data stream (key, step), not
    of the weights, so runs sharing a stream compute it once (`streams.py`)."""
    augment_key, mixup_key = jax.random.split(jax.random.fold_in(_data_streams(data_key)[1], step))
    x = augment.augment_batch(ctx.config.augment, augment_key, to_unit(images[batch_index]), hparams)
    y = labels[batch_index]
    targets = losses.smooth_labels(jax.nn.one_hot(y, ctx.num_classes), hparams["label_smoothing"])
    if ctx.use_mixup:
        x, targets = augment.mixup(mixup_key, x, targets, hparams["mixup_alpha"])
    return Batch(standardize(x, hparams["mean"], hparams["std"]), y, targets)


class Gradients(NamedTuple):
    """One run's backward pass on a batch, before the update, in a form that adds up over
    microbatches (`accumulate`)."""

    loss: jax.Array  # mean over the batch (summed over microbatches)
    correct: jax.Array
    dead_channels: list[jax.Array]  # per ReLU layer, 1.0 where a channel is dead on every example
    grads: nnx.State  # of the mean loss (summed over microbatches)
    model_state: nnx.State


def run_gradients(ctx: StepContext, params: nnx.State, model_state: nnx.State, batch: Batch) -> Gradients:
    """Forward and backward pass of one run on `batch` (the whole batch or one microbatch)."""
    def loss_fn(params):
        model = nnx.merge(ctx.train_graph, params, model_state, copy=True)
        logits, intermediates = nnx.capture(model, nnx.Intermediate)(batch.x)
        logits = logits.astype(jnp.float32)
        loss = losses.softmax_cross_entropy(logits, batch.targets).mean()
        return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)), metrics.dead_channels(intermediates))

    (loss, (logits, new_model_state, dead)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return Gradients(loss, jnp.sum(jnp.argmax(logits, -1) == batch.labels), dead, grads, new_model_state)


def accumulate(total: Gradients, part: Gradients) -> Gradients:
    """`total` and a further microbatch's `part`: sums add, a channel stays dead only if dead in both."""
    return Gradients(total.loss + part.loss, total.correct + part.correct,
                     [a * b for a, b in zip(total.dead_channels, part.dead_channels)],
                     jax.tree.map(jnp.add, total.grads, part.grads), part.model_state)


def microbatch_gradients(gradients: Callable[[Batch], Gradients], batch: Batch, microbatches: int,
                         batch_axis: int = 0) -> Gradients:
    """`gradients(batch)` computed on `microbatches` equal slices of `batch` along `batch_axis`,
    one after another, and accumulated: the same sums as on the whole batch for a model whose
    examples never interact (`execution.batch_separable`), in a working set `microbatches` times
    smaller."""
    if microbatches == 1:
        return gradients(batch)

    def sliced(v):
        size = v.shape[batch_axis]
        parts = v.reshape(*v.shape[:batch_axis], microbatches, size // microbatches, *v.shape[batch_axis + 1:])
        return jnp.moveaxis(parts, batch_axis, 0)
    slices = jax.tree.map(sliced, batch)
    first = gradients(jax.tree.map(lambda v: v[0], slices))
    rest = jax.tree.map(lambda v: v[1:], slices)
    total, _ = jax.lax.scan(lambda total, part: (accumulate(total, gradients(part)), None), first, rest)
    return total


def apply_gradients(ctx: StepContext, state: TrainState, hparams: dict, gradients: Gradients,
                    microbatches: int = 1) -> tuple[TrainState, EpochSums]:
    """One SGD step of one run from its gradients accumulated over `microbatches` equal slices of
    the batch: update and step metrics."""
    batch_size = ctx.config.batch_size
    loss, grads = gradients.loss, gradients.grads
    if microbatches > 1:
        loss, grads = loss / microbatches, jax.tree.map(lambda g: g / microbatches, grads)
    updates, opt_state = ctx.optimizer(hparams).update(grads, state.opt_state, state.params)
    new_state = TrainState(params=optax.apply_updates(state.params, updates), model_state=gradients.model_state,
                           opt_state=opt_state, data_key=state.data_key, step=state.step + 1,
                           diverged=state.diverged | ~jnp.isfinite(loss))
    step_sums = EpochSums(loss=loss * batch_size, correct=gradients.correct, count=jnp.float32(batch_size),
                          steps=jnp.float32(1), dead_fraction=metrics.dead_unit_fraction(gradients.dead_channels),
                          grad_norm=metrics.layer_gradient_norms(grads))
    return new_state, step_sums


def train_step(ctx: StepContext, state: TrainState, hparams: dict, batch: Batch, microbatches: int = 1
               ) -> tuple[TrainState, EpochSums]:
    """One SGD step of one run on a prepared batch: forward, backward (`microbatches` at a time), update."""
    gradients = microbatch_gradients(lambda b: run_gradients(ctx, state.params, state.model_state, b), batch,
                                     microbatches)
    return apply_gradients(ctx, state, hparams, gradients, microbatches)


def run_step(ctx: StepContext, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
             batch_index: jax.Array, microbatches: int = 1) -> tuple[TrainState, EpochSums]:
    """One step of one run on its own data stream."""
    batch = batch_inputs(ctx, state.data_key, state.step, hparams, images, labels, batch_index)
    return train_step(ctx, state, hparams, batch, microbatches)


# Traced hyperparameters that `batch_inputs` never reads: a grid over others makes the batch per run.
MODEL_ONLY_HPARAMS = frozenset({"learning_rate", "weight_decay", "momentum", "dropout_rate"})


def stream_step(ctx: StepContext, states: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                batch_index: jax.Array, *, per_run: frozenset[str], runs_per_group: int | None,
                microbatches: int = 1) -> tuple[TrainState, EpochSums]:
    """One step of the runs of one data stream (leading axis of `states`): the batch is prepared
    once from the stream's key and step, unless a grid value it reads differs per run, and the
    runs are mapped `runs_per_group` at a time (`execution.map_over_runs`; None: one vmap) with
    every hyperparameter outside `per_run` (the traced grid's) a shared constant, so whatever is
    computed from the batch alone (e.g. the first layer's patches under vmap) is computed once.
    With `microbatches`, every run's gradients on one slice of the batch come before the next
    slice, so what is computed from a slice alone is still shared by the stream's runs."""
    constants = {name: value[0] for name, value in hparams.items() if name not in per_run}
    varying = {name: value for name, value in hparams.items() if name in per_run}
    data_key, step = states.data_key[0], states.step[0]  # equal for every run of the stream
    shared_batch = None if per_run - MODEL_ONLY_HPARAMS else batch_inputs(
        ctx, data_key, step, constants, images, labels, batch_index)

    def run_hparams(run_varying):
        return {**constants, **run_varying}

    def run_batch(run_varying):  # the run's own batch when a grid value it reads differs per run
        return batch_inputs(ctx, data_key, step, run_hparams(run_varying), images, labels, batch_index)

    if microbatches == 1:
        def one_run(state, run_varying):
            batch = run_batch(run_varying) if shared_batch is None else shared_batch
            return train_step(ctx, state, run_hparams(run_varying), batch)
        return execution.map_over_runs(one_run, (0, 0), runs_per_group)(states, varying)

    per_run_batch = shared_batch is None
    batch = jax.vmap(run_batch)(varying) if per_run_batch else shared_batch
    run_gradients_of = execution.map_over_runs(
        functools.partial(run_gradients, ctx), (0, 0, 0 if per_run_batch else None), runs_per_group)
    gradients = microbatch_gradients(lambda part: run_gradients_of(states.params, states.model_state, part),
                                     batch, microbatches, batch_axis=1 if per_run_batch else 0)

    def update(state, run_varying, gradients_of_run):
        return apply_gradients(ctx, state, run_hparams(run_varying), gradients_of_run, microbatches)
    return execution.map_over_runs(update, (0, 0, 0), runs_per_group)(states, varying, gradients)


def train_chunk(step_fn: Callable[[TrainState, jax.Array], tuple[TrainState, EpochSums]], state: TrainState,
                batches: jax.Array, start: jax.Array, sums: EpochSums, *, length: int,
                bare: bool = False) -> tuple[TrainState, EpochSums]:
    """`length` consecutive steps `step_fn(state, batch_index)` from batch row `start`, each step's
    sums added to `sums` in step order: an epoch's sums are then the same bits however it is cut
    into calls (job/chunks.py sizes calls from timings, which differ between a run and its resume).

    A step is the same bits in a call of any length only inside a loop body: XLA inlines a loop of
    a known trip count of 1 and fuses that step differently (004's CNN, Adam, batch norm, runs in
    groups of 1: the 7th digit). So a 1-step call is a loop whose trip count XLA cannot see.
    `bare`: a 1-step call runs its step outside any loop, for XLA's convolutions, which XLA:CPU
    runs several times slower inside loop bodies (`ExecutionPlan.bare_steps`: automatic calls are
    then 1 step; a longer one asked for in the config is a scan as any other)."""
    def one(carry: tuple[TrainState, EpochSums], batch_index: jax.Array) -> tuple[tuple[TrainState, EpochSums], None]:
        state, sums = carry
        state, step_sums = step_fn(state, batch_index)
        return (state, jax.tree.map(jnp.add, sums, step_sums)), None

    def row(offset: jax.Array | int) -> jax.Array:
        return jax.lax.dynamic_index_in_dim(batches, start + offset, keepdims=False)

    if length == 1 and bare:
        return one((state, sums), row(0))[0]
    if length == 1:
        return jax.lax.fori_loop(0, jax.lax.optimization_barrier(jnp.int32(1)),
                                 lambda i, carry: one(carry, row(i))[0], (state, sums))
    chunk = jax.lax.dynamic_slice_in_dim(batches, start, length, axis=0)
    return jax.lax.scan(one, (state, sums), chunk)[0]


def eval_step(ctx: StepContext, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
              weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Confusion counts, loss sum and probabilities of one run on one batch; `weights` (0/1 per
    example) select the run's own examples, e.g. its held-out fold."""
    model = nnx.merge(ctx.eval_graph, state.params, state.model_state, copy=True)
    logits = model(standardize(to_unit(images), hparams["mean"], hparams["std"])).astype(jnp.float32)
    loss_sum = (weights * losses.softmax_cross_entropy(logits, jax.nn.one_hot(labels, ctx.num_classes))).sum()
    confusion = metrics.confusion_matrix(labels, jnp.argmax(logits, -1), ctx.num_classes, weights)
    return confusion, loss_sum, jax.nn.softmax(logits)


def eval_subset_step(ctx: StepContext, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                     index: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`eval_step` on one run's own examples, gathered by `index` from the whole split: a run scores
    only its held-out fold instead of every example under a 0/1 mask."""
    return eval_step(ctx, state, hparams, jnp.take(images, index, axis=0), jnp.take(labels, index, axis=0), weights)
