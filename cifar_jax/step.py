"""One run's training and evaluation steps as pure functions of a `StepContext`.

`train.make_train` vmaps them over the run axis (and shards them over devices) and jits them; on
their own they are plain functions of one run's state, easy to test and to read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cifar_jax import augment, execution, losses, metrics, optim
from cifar_jax.models.layers import DropoutRate
from cifar_jax.splits import standardize, to_unit


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


def train_step(ctx: StepContext, state: TrainState, hparams: dict, batch: Batch) -> tuple[TrainState, EpochSums]:
    """One SGD step of one run on a prepared batch: forward, backward, update."""

    def loss_fn(params):
        model = nnx.merge(ctx.train_graph, params, state.model_state, copy=True)
        logits, intermediates = nnx.capture(model, nnx.Intermediate)(batch.x)
        logits = logits.astype(jnp.float32)
        new_model_state = nnx.state(model, nnx.Not(nnx.Param))
        loss = losses.softmax_cross_entropy(logits, batch.targets).mean()
        return loss, (logits, new_model_state, metrics.dead_unit_fraction(intermediates))

    (loss, (logits, model_state, dead)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = ctx.optimizer(hparams).update(grads, state.opt_state, state.params)
    new_state = TrainState(params=optax.apply_updates(state.params, updates), model_state=model_state,
                           opt_state=opt_state, data_key=state.data_key, step=state.step + 1,
                           diverged=state.diverged | ~jnp.isfinite(loss))
    batch_size = ctx.config.batch_size
    step_sums = EpochSums(loss=loss * batch_size, correct=jnp.sum(jnp.argmax(logits, -1) == batch.labels),
                          count=jnp.float32(batch_size), steps=jnp.float32(1), dead_fraction=dead,
                          grad_norm=metrics.layer_gradient_norms(grads))
    return new_state, step_sums


def run_step(ctx: StepContext, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
             batch_index: jax.Array) -> tuple[TrainState, EpochSums]:
    """One step of one run on its own data stream."""
    batch = batch_inputs(ctx, state.data_key, state.step, hparams, images, labels, batch_index)
    return train_step(ctx, state, hparams, batch)


# Traced hyperparameters that `batch_inputs` never reads: a grid over others makes the batch per run.
MODEL_ONLY_HPARAMS = frozenset({"learning_rate", "weight_decay", "momentum", "dropout_rate"})


def stream_step(ctx: StepContext, states: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                batch_index: jax.Array, *, per_run: frozenset[str], runs_per_group: int | None
                ) -> tuple[TrainState, EpochSums]:
    """One step of the runs of one data stream (leading axis of `states`): the batch is prepared
    once from the stream's key and step, unless a grid value it reads differs per run, and the
    runs are mapped `runs_per_group` at a time (`execution.map_over_runs`; None: one vmap) with
    every hyperparameter outside `per_run` (the traced grid's) a shared constant, so whatever is
    computed from the batch alone (e.g. the first layer's patches under vmap) is computed once."""
    constants = {name: value[0] for name, value in hparams.items() if name not in per_run}
    varying = {name: value for name, value in hparams.items() if name in per_run}
    data_key, step = states.data_key[0], states.step[0]  # equal for every run of the stream
    shared_batch = None if per_run - MODEL_ONLY_HPARAMS else batch_inputs(
        ctx, data_key, step, constants, images, labels, batch_index)

    def one_run(state, run_varying):
        run_hparams = {**constants, **run_varying}
        batch = (batch_inputs(ctx, data_key, step, run_hparams, images, labels, batch_index)
                 if shared_batch is None else shared_batch)
        return train_step(ctx, state, run_hparams, batch)
    return execution.map_over_runs(one_run, (0, 0), runs_per_group)(states, varying)


def train_chunk(step_fn: Callable[[TrainState, jax.Array], tuple[TrainState, EpochSums]], state: TrainState,
                batches: jax.Array, start: jax.Array, sums: EpochSums, *, length: int) -> tuple[TrainState, EpochSums]:
    """`length` consecutive steps `step_fn(state, batch_index)` from batch row `start`, added to `sums`."""
    chunk = jax.lax.dynamic_slice_in_dim(batches, start, length, axis=0)
    if length == 1:  # a bare step: XLA:CPU runs convolutions inside loop bodies slowly
        state, chunk_sums = step_fn(state, chunk[0])
    else:
        state, per_step = jax.lax.scan(step_fn, state, chunk)
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
