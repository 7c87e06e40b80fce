"""The training program: pure functions over a batch of runs, and the loop that drives them.

A *run* is one model: a seed index plus one value of every traced hyperparameter. All runs of a
config share one compiled program: `make_train(config, ...)` resolves everything static (shapes,
model, optimizer structure, augmentation) and returns jitted functions whose leading axis is the
run axis (`jax.vmap`). Hyperparameters that do not change shapes (`TRACED_HPARAMS`) are inputs,
so `num_seeds x hparam_grid` trains at once.
"""

import dataclasses
import functools
import itertools
import json
import logging
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers
from flax import nnx

from cifar_jax import augment, data, execution, losses, metrics, models, optim
from cifar_jax import workdir as workdir_lib
from cifar_jax.checkpoint import Checkpoints
from cifar_jax.errors import ConfigError
from cifar_jax.models.layers import DropoutRate, set_compute_dtype

# Hyperparameters that are inputs of the compiled program (one value per run), not constants,
# and the config field each one overrides.
TRACED_HPARAMS = {
    "learning_rate": "optim.learning_rate",
    "weight_decay": "optim.weight_decay",
    "momentum": "optim.momentum",
    "dropout_rate": "model.dropout_rate",
    "label_smoothing": "optim.label_smoothing",
    "mixup_alpha": "augment.mixup_alpha",
}


@dataclasses.dataclass(frozen=True)
class RunGrid:
    """Which runs one program trains: every fold x every setting of the traced grid x every seed.

    Run r is (fold, setting, seed) in that nesting order, seeds fastest. Seed i of every setting and
    fold starts from the same key, so settings are paired comparisons.
    """

    settings: tuple[dict[str, float], ...]  # the grid values of each setting (empty dict: no grid)
    num_seeds: int
    num_folds: int  # 1 without cross-validation
    hparams: dict[str, np.ndarray]  # per run, leading axis = run

    @property
    def num_runs(self) -> int:
        return self.num_folds * len(self.settings) * self.num_seeds

    @property
    def seed_index(self) -> np.ndarray:
        return np.arange(self.num_runs) % self.num_seeds

    @property
    def setting_index(self) -> np.ndarray:
        return np.arange(self.num_runs) // self.num_seeds % len(self.settings)

    @property
    def fold_index(self) -> np.ndarray:
        return np.arange(self.num_runs) // (self.num_seeds * len(self.settings))


def base_hparams(config: ml_collections.ConfigDict, num_channels: int) -> dict[str, Any]:
    """The traced values a config sets when no grid overrides them."""
    mean, std = data.normalization_constants(config.data.mean, config.data.std, num_channels)
    if not 0 <= config.model.dropout_rate < 1:
        raise ConfigError(f"model.dropout_rate={config.model.dropout_rate} must be in [0, 1)")
    return {**optim.default_hparams(config), "dropout_rate": float(config.model.dropout_rate), "mean": mean, "std": std}


def _with_setting(config: ml_collections.ConfigDict, setting: dict[str, float]) -> ml_collections.ConfigDict:
    """The config with one grid setting written into the fields it overrides."""
    config = config.copy_and_resolve_references()
    for name, value in setting.items():
        section, field = TRACED_HPARAMS[name].split(".")
        config[section][field] = float(value)
    return config


def make_run_grid(config: ml_collections.ConfigDict, num_channels: int) -> RunGrid:
    """Expands `config.hparam_grid` (name -> values, a product) and the seeds into per-run arrays."""
    if config.num_seeds < 1:
        raise ConfigError(f"num_seeds={config.num_seeds} must be at least 1")
    grid = dict(config.get("hparam_grid", {}) or {})
    for name, values in grid.items():
        if name not in TRACED_HPARAMS:
            raise ConfigError(
                f"hparam_grid.{name} is not a traced hyperparameter; choose from {', '.join(TRACED_HPARAMS)} "
                "(shape-changing settings belong in a sweep)"
            )
        if not isinstance(values, (tuple, list)) or not values:
            raise ConfigError(f"hparam_grid.{name} must be a non-empty tuple of values, got {values!r}")
    names = sorted(grid)
    settings = tuple(dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names)))
    # Validating every setting as if it were the config's own value gives grids the same checks.
    per_setting = [base_hparams(_with_setting(config, s), num_channels) for s in settings]
    base = per_setting[0]
    num_folds = max(int(config.data.num_folds), 1)
    hparams = {
        key: np.tile(np.repeat(np.stack([np.asarray(h[key], np.float32) for h in per_setting]), config.num_seeds,
                               axis=0), (num_folds,) + (1,) * np.ndim(base[key]))
        for key in base
    }
    return RunGrid(settings=settings, num_seeds=config.num_seeds, num_folds=num_folds, hparams=hparams)


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
class Program:
    """The compiled pieces of one config; every function maps over the leading run axis."""

    init: Callable[[jax.Array, dict], TrainState]
    epoch_batches: Callable[[TrainState, jax.Array], jax.Array]
    train_steps: Callable[..., tuple[TrainState, EpochSums]]
    eval_batch: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
    eval_graph: nnx.GraphDef  # the model in eval mode, for merging a run's state into a module
    layer_names: tuple[str, ...]  # the layers whose gradient norms are reported
    steps_per_epoch: int
    steps_per_call: int
    step_residual_bytes: int  # activations one run's step keeps for backward: sets CPU run groups
    num_classes: int

    def runs_per_group(self, config: ml_collections.ConfigDict, num_runs: int) -> int:
        """Runs that one training step computes together (vmapped); see `execution`."""
        return execution.runs_per_group(config, num_runs, bytes_per_run=self.step_residual_bytes)


def _model_factory(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int):
    # Dropout layers exist only where the built rate is > 0; a traced rate grid needs them built.
    model_config = config.model.copy_and_resolve_references()
    model_config.dropout_rate = max([config.model.dropout_rate, *config.hparam_grid.get("dropout_rate", ())])

    dtype = execution.compute_dtype(config)

    def build(params_key: jax.Array, dropout_key: jax.Array) -> nnx.Module:
        model = models.create_model(
            model_config, input_shape=image_shape, num_classes=num_classes,
            rngs=nnx.Rngs(params=params_key, dropout=dropout_key),
        )
        set_compute_dtype(model, dtype)
        return model
    return build


def _data_streams(data_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(shuffle root, augmentation root): independent streams, so turning augmentation on or off
    never changes a run's data order."""
    shuffle_root, augment_root = jax.random.split(jax.random.wrap_key_data(data_key))
    return shuffle_root, augment_root


def _standardize(images01: jax.Array, hparams: dict) -> jax.Array:
    return (images01 - hparams["mean"]) / hparams["std"]


def _step_residual_bytes(abstract_model: nnx.Module, train_graph: nnx.GraphDef, batch_shape: tuple[int, ...]) -> int:
    """Activations one run's training step keeps for its backward pass, from shapes alone: what
    decides how many runs a CPU step can vmap before it spills out of cache
    (`execution.runs_per_group`)."""
    _, params, model_state = nnx.split(abstract_model, nnx.Param, ...)

    def forward(params, model_state, images):
        return nnx.merge(train_graph, params, model_state, copy=True)(images).sum()

    return execution.residual_bytes(forward, params, model_state, jax.ShapeDtypeStruct(batch_shape, jnp.float32))


def make_train(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
               num_train: int) -> Program:
    """Resolves the static parts of `config` and returns the jitted, run-vmapped functions."""
    models.validate_model_config(config.model, image_shape, num_classes)
    for field in ("num_epochs", "checkpoint_every_epochs", "eval_batch_size"):
        if config[field] < 1:
            raise ConfigError(f"{field}={config[field]} must be at least 1")
    if config.batch_size < 1 or config.batch_size > num_train:
        raise ConfigError(f"batch_size={config.batch_size} must be between 1 and the {num_train} training images")
    steps_per_epoch = num_train // config.batch_size
    steps_per_call = execution.steps_per_call(config, steps_per_epoch)
    build = _model_factory(config, image_shape, num_classes)
    use_mixup = config.augment.mixup_alpha > 0 or "mixup_alpha" in config.hparam_grid

    abstract = nnx.eval_shape(lambda: build(jax.random.key(0), jax.random.key(0)))
    if "dropout_rate" in config.hparam_grid and not jax.tree.leaves(nnx.state(abstract, DropoutRate)):
        raise ConfigError(f"hparam_grid.dropout_rate needs dropout layers, but model.dropout_placement="
                          f"{config.model.dropout_placement!r} places none; choose conv, dense, all or head")
    abstract.train()
    train_graph = nnx.split(abstract)[0]
    abstract.eval()
    eval_graph = nnx.split(abstract)[0]

    step_bytes = _step_residual_bytes(abstract, train_graph, (config.batch_size, *image_shape))
    execution.runs_per_group(config, num_runs=1, bytes_per_run=step_bytes)  # a bad value fails here, not mid-run

    def make_tx(hparams: dict) -> optax.GradientTransformation:
        return optim.make_optimizer(config.optim, hparams, steps_per_epoch=steps_per_epoch,
                                    num_epochs=config.num_epochs)

    def init_run(run_key: jax.Array, hparams: dict) -> TrainState:
        params_key, dropout_key, data_key = jax.random.split(jax.random.wrap_key_data(run_key), 3)
        model = build(params_key, dropout_key)
        rates = nnx.state(model, DropoutRate)
        nnx.update(model, jax.tree.map(lambda _: hparams["dropout_rate"], rates))
        _, params, model_state = nnx.split(model, nnx.Param, ...)
        return TrainState(params=params, model_state=model_state, opt_state=make_tx(hparams).init(params),
                          data_key=jax.random.key_data(data_key), step=jnp.zeros((), jnp.int32),
                          diverged=jnp.zeros((), bool))

    def epoch_batches_run(state: TrainState, epoch: jax.Array, train_index: jax.Array) -> jax.Array:
        key = jax.random.fold_in(_data_streams(state.data_key)[0], epoch)
        order = train_index[jax.random.permutation(key, num_train)]
        return order[: steps_per_epoch * config.batch_size].reshape(steps_per_epoch, config.batch_size)

    def train_step(state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                   batch_index: jax.Array) -> tuple[TrainState, tuple[jax.Array, jax.Array]]:
        step_key = jax.random.fold_in(_data_streams(state.data_key)[1], state.step)
        augment_key, mixup_key = jax.random.split(step_key)
        x = augment.augment_batch(config.augment, augment_key,
                                  images[batch_index].astype(jnp.float32) / 255.0, hparams)
        y = labels[batch_index]
        targets = losses.smooth_labels(jax.nn.one_hot(y, num_classes), hparams["label_smoothing"])
        if use_mixup:  # static: Beta sampling is costly to compile, so it is left out when off
            x, targets = augment.mixup(mixup_key, x, targets, hparams["mixup_alpha"])
        x = _standardize(x, hparams)

        def loss_fn(params):
            model = nnx.merge(train_graph, params, state.model_state, copy=True)
            logits, intermediates = nnx.capture(model, nnx.Intermediate)(x)
            logits = logits.astype(jnp.float32)
            dead = metrics.dead_unit_fraction(intermediates)
            new_model_state = nnx.state(model, nnx.Not(nnx.Param))
            return losses.softmax_cross_entropy(logits, targets).mean(), (logits, new_model_state, dead)

        (loss, (logits, model_state, dead)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        tx = make_tx(hparams)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(params=optax.apply_updates(state.params, updates), model_state=model_state,
                               opt_state=opt_state, data_key=state.data_key, step=state.step + 1,
                               diverged=state.diverged | ~jnp.isfinite(loss))
        step_sums = EpochSums(loss=loss * config.batch_size, correct=jnp.sum(jnp.argmax(logits, -1) == y),
                              count=jnp.float32(config.batch_size), steps=jnp.float32(1), dead_fraction=dead,
                              grad_norm=metrics.layer_gradient_norms(grads))
        return new_state, step_sums

    def train_steps_run(state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                        batches: jax.Array, start: jax.Array, sums: EpochSums, *, length: int):
        chunk = jax.lax.dynamic_slice_in_dim(batches, start, length, axis=0)
        step = functools.partial(train_step, hparams=hparams, images=images, labels=labels)
        if length == 1:  # a bare step: XLA:CPU runs convolutions inside loop bodies slowly
            state, chunk_sums = step(state, batch_index=chunk[0])
        else:
            state, per_step = jax.lax.scan(lambda s, b: step(s, batch_index=b), state, chunk)
            chunk_sums = jax.tree.map(lambda v: v.sum(axis=0), per_step)
        return state, jax.tree.map(jnp.add, sums, chunk_sums)

    def eval_batch_run(state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array, weights: jax.Array):
        """`weights` (0/1 per example) select each run's own examples, e.g. its held-out fold."""
        model = nnx.merge(eval_graph, state.params, state.model_state, copy=True)
        logits = model(_standardize(images.astype(jnp.float32) / 255.0, hparams)).astype(jnp.float32)
        loss_sum = (weights * losses.softmax_cross_entropy(logits, jax.nn.one_hot(labels, num_classes))).sum()
        confusion = metrics.confusion_matrix(labels, jnp.argmax(logits, -1), num_classes, weights)
        return confusion, loss_sum, jax.nn.softmax(logits)

    def train_steps(state, hparams, images, labels, batches, start, sums, *, length: int):
        run = functools.partial(train_steps_run, length=length)
        group_size = execution.runs_per_group(config, num_runs=state.step.shape[0], bytes_per_run=step_bytes)
        return execution.map_over_runs(run, (0, 0, None, None, 0, None, 0), group_size)(
            state, hparams, images, labels, batches, start, sums)

    # Run once per job or epoch: XLA's optimizer would cost seconds of compile time for nothing.
    run_once = {"xla_backend_optimization_level": 0}
    return Program(
        init=jax.jit(jax.vmap(init_run), compiler_options=run_once),
        epoch_batches=jax.jit(jax.vmap(epoch_batches_run, in_axes=(0, None, 0)), compiler_options=run_once),
        train_steps=jax.jit(train_steps, static_argnames="length", donate_argnums=(0, 6)),
        eval_batch=jax.jit(jax.vmap(eval_batch_run, in_axes=(0, 0, None, None, 0))),
        eval_graph=eval_graph,
        layer_names=tuple(metrics.layer_names(nnx.state(abstract, nnx.Param))),
        steps_per_epoch=steps_per_epoch,
        steps_per_call=steps_per_call,
        step_residual_bytes=step_bytes,
        num_classes=num_classes,
    )


def run_keys(seed: int, seed_index: np.ndarray, fold_index: np.ndarray | None = None) -> jax.Array:
    """Per-run key data: run i of every setting shares seed i, so settings are paired comparisons;
    each cross-validation fold starts from a fresh initialization of its own."""
    base = jax.random.key(seed)
    folds = jnp.zeros_like(seed_index) if fold_index is None else jnp.asarray(fold_index)

    def key(i, fold):
        run_key = jax.random.fold_in(base, i)
        return jax.random.key_data(jax.lax.cond(fold > 0, lambda: jax.random.fold_in(run_key, fold), lambda: run_key))
    return jax.vmap(key)(jnp.asarray(seed_index), folds)


def train_epoch(program: Program, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                epoch: int, train_index: jax.Array | None = None) -> tuple[TrainState, EpochSums]:
    """Runs one epoch as `steps_per_epoch / steps_per_call` calls of the compiled step chunk.

    `train_index` (runs, n) gives each run its own training examples (cross-validation folds);
    by default every run trains on all of `images`."""
    num_runs = state.step.shape[0]
    if train_index is None:
        train_index = jnp.broadcast_to(jnp.arange(images.shape[0]), (num_runs, images.shape[0]))
    batches = program.epoch_batches(state, jnp.int32(epoch), train_index)
    zeros = lambda _: jnp.zeros((num_runs,), jnp.float32)  # a new buffer per leaf: sums are donated
    sums = EpochSums(**{name: zeros(None) for name in EpochSums._fields if name != "grad_norm"},
                     grad_norm={layer: zeros(None) for layer in program.layer_names})
    start = 0
    while start < program.steps_per_epoch:
        length = min(program.steps_per_call, program.steps_per_epoch - start)
        state, sums = program.train_steps(state, hparams, images, labels, batches, jnp.int32(start), sums,
                                          length=length)
        start += length
    return state, sums


def evaluate(program: Program, state: TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
             batch_size: int, *, weights: jax.Array | None = None, return_probs: bool = False) -> dict[str, np.ndarray]:
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


@dataclasses.dataclass(frozen=True)
class Splits:
    """The device-resident arrays of one training job.

    With k-fold cross-validation, `train` is the whole pool, fold f trains on
    `fold_train_index[f]` and is validated on the pool examples where `fold_val_mask[f]` is 1.
    """

    train: tuple[jax.Array, jax.Array]
    eval: dict[str, tuple[jax.Array, jax.Array]]  # 'val' and/or 'test'
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    fold_train_index: jax.Array | None = None  # (folds, n): equal-length index sets
    fold_val_mask: jax.Array | None = None  # (folds, pool size)

    @property
    def num_train(self) -> int:
        """Examples one run trains on per epoch."""
        return self.train[0].shape[0] if self.fold_train_index is None else self.fold_train_index.shape[1]


def _fold_arrays(labels: np.ndarray, num_folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified folds as equal-length train index sets (trimmed by at most one example, since
    fold sizes differ by at most one) and 0/1 validation masks."""
    folds = data.kfold_indices(labels, num_folds, seed)
    length = min(len(train_idx) for train_idx, _ in folds)
    train_index = np.stack([train_idx[:length] for train_idx, _ in folds]).astype(np.int32)
    val_mask = np.zeros((num_folds, len(labels)), np.float32)
    for f, (_, val_idx) in enumerate(folds):
        val_mask[f, val_idx] = 1.0
    return train_index, val_mask


def prepare_splits(config: ml_collections.ConfigDict) -> Splits:
    """Loads the data set and carves validation (a split, or k folds); arrays go to the device once."""
    dataset = data.load_dataset(config.data)
    to_device = lambda pair: (jnp.asarray(pair[0]), jnp.asarray(pair[1], jnp.int32))
    eval_splits, folds = {}, {}
    if config.data.num_folds:
        train_pair = (dataset.train_images, dataset.train_labels)
        eval_splits["val"] = train_pair
        train_index, val_mask = _fold_arrays(dataset.train_labels, config.data.num_folds, config.data.seed)
        folds = {"fold_train_index": jnp.asarray(train_index), "fold_val_mask": jnp.asarray(val_mask)}
    else:
        train_idx, val_idx = data.validation_split(dataset.train_labels, config.data.val_size, config.data.seed)
        train_pair = (dataset.train_images[train_idx], dataset.train_labels[train_idx])
        if len(val_idx):
            eval_splits["val"] = (dataset.train_images[val_idx], dataset.train_labels[val_idx])
    if dataset.test_images is not None:
        eval_splits["test"] = (dataset.test_images, dataset.test_labels)
    else:
        logging.warning("%s has no test split (%s): test metrics are skipped.", dataset.name, dataset.source)
    return Splits(train=to_device(train_pair), eval={name: to_device(pair) for name, pair in eval_splits.items()},
                  image_shape=dataset.image_shape, class_names=dataset.class_names, **folds)


def run_inputs(splits: Splits, grid: RunGrid) -> tuple[jax.Array | None, dict[str, jax.Array | None]]:
    """Each run's training indices and per-split evaluation weights (None: all examples)."""
    if splits.fold_train_index is None:
        return None, {name: None for name in splits.eval}
    folds = jnp.asarray(grid.fold_index)
    return splits.fold_train_index[folds], {name: splits.fold_val_mask[folds] if name == "val" else None
                                            for name in splits.eval}


def _epoch_record(sums: EpochSums, evals: dict[str, dict], diverged: np.ndarray) -> dict[str, np.ndarray]:
    steps = np.asarray(sums.steps)
    record = {
        "train_loss": np.asarray(sums.loss) / np.asarray(sums.count),
        "train_accuracy": np.asarray(sums.correct) / np.asarray(sums.count),
        "dead_relu_fraction": np.asarray(sums.dead_fraction) / steps,
        **{f"grad_norm/{layer}": np.asarray(total) / steps for layer, total in sums.grad_norm.items()},
    }
    for split, result in evals.items():
        for name in ("loss", "accuracy", "macro_f1", "per_class_accuracy", "confusion"):
            record[f"{split}_{name}"] = result[name]
    for name, values in record.items():  # a diverged run reports NaN, never a stale number
        mask = diverged.reshape((-1,) + (1,) * (np.ndim(values) - 1))
        record[name] = np.where(mask, np.nan, values)
    return record


def _progress_line(epoch: int, num_epochs: int, record: dict, diverged: np.ndarray, images_per_s: float,
                   eta_s: float) -> str:
    val_split = "val" if "val_accuracy" in record else ("test" if "test_accuracy" in record else None)
    parts = [f"epoch {epoch}/{num_epochs}", f"loss {np.nanmean(record['train_loss']):.3f}"]
    if val_split:
        parts.append(f"{val_split} acc {metrics.format_mean_std(record[f'{val_split}_accuracy'])}%"
                     f" ({record[f'{val_split}_accuracy'].size} runs)")
    if diverged.any():
        parts.append(f"{int(diverged.sum())} diverged")
    parts.append(f"{images_per_s:,.0f} img/s")
    parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(max(eta_s, 0)))}")
    return "  ".join(parts)


def run_labels(grid: RunGrid) -> list[dict[str, Any]]:
    """Per-run identification written next to every metric: seed, setting and its grid values."""
    folds = (lambda r: {"fold": int(grid.fold_index[r])}) if grid.num_folds > 1 else (lambda r: {})
    return [{"run": r, "seed_index": int(grid.seed_index[r]), "setting": int(grid.setting_index[r]), **folds(r),
             **grid.settings[grid.setting_index[r]]} for r in range(grid.num_runs)]


def _jsonable(record: dict[str, np.ndarray]) -> dict[str, list]:
    return {name: np.asarray(values).tolist() for name, values in record.items()}


def _metrics_lines(history: list[dict], labels: list[dict], diverged_by_epoch: list[list[bool]]) -> list[str]:
    lines = []
    for epoch, (record, diverged) in enumerate(zip(history, diverged_by_epoch), start=1):
        for r, label in enumerate(labels):
            row = {"epoch": epoch, **label, "diverged": diverged[r], **metrics.per_run_rows(record, r)}
            lines.append(json.dumps(row))
    return lines


def summarize_results(config: ml_collections.ConfigDict, grid: RunGrid, history: list[dict],
                      diverged: np.ndarray, wall_time_s: float) -> dict[str, Any]:
    """results.json: per-run final and best-epoch metrics, and per-setting statistics over seeds."""
    final = {name: np.asarray(values, dtype=np.float64) for name, values in history[-1].items()}
    selection = "val_accuracy" if "val_accuracy" in final else None
    if selection:
        by_epoch = np.stack([np.asarray(h[selection], dtype=np.float64) for h in history])  # (epochs, runs)
        filled = np.where(np.isnan(by_epoch), -np.inf, by_epoch)
        final["best_epoch"] = filled.argmax(axis=0) + 1.0
        final["best_val_accuracy"] = np.where(diverged, np.nan, filled.max(axis=0))
    labels = run_labels(grid)
    return {
        "config_name": config.get("name", ""),
        "num_runs": grid.num_runs,
        "num_seeds": grid.num_seeds,
        "num_epochs": len(history),
        "settings": list(grid.settings),
        "wall_time_s": wall_time_s,
        "runs": [{**label, "diverged": bool(diverged[r]), **metrics.per_run_rows(final, r)}
                 for r, label in enumerate(labels)],
        "summary": {
            name: [metrics.summarize(values[grid.setting_index == s]) for s in range(len(grid.settings))]
            for name, values in final.items() if np.ndim(values) == 1 and name != "best_epoch"
        },
    }


def _best_value(record: dict, metric: str) -> float | None:
    values = np.asarray(record.get(metric, []), dtype=np.float64)
    return float(np.nanmean(values)) if values.size and not np.all(np.isnan(values)) else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) every run of `config`, evaluating each epoch, checkpointing, and writing
    metrics.jsonl, TensorBoard events and results.json into `workdir`."""
    splits = prepare_splits(config)  # before touching the workdir: a missing data set changes nothing
    grid = make_run_grid(config, splits.image_shape[-1])
    program = make_train(config, splits.image_shape, len(splits.class_names), num_train=splits.num_train)
    data_meta = {"image_shape": list(splits.image_shape), "class_names": list(splits.class_names),
                 "num_train": splits.num_train}
    workdir_lib.claim(workdir, config, data_meta)  # refuses a workdir of another config before writing anything
    hparams = jax.tree.map(jnp.asarray, grid.hparams)
    state = program.init(run_keys(config.seed, grid.seed_index, grid.fold_index), hparams)
    train_index, eval_weights = run_inputs(splits, grid)
    checkpoints = Checkpoints(workdir, keep=config.checkpoint.keep, best_metric=config.checkpoint.best_metric)
    restored = checkpoints.restore(state)
    history, diverged_by_epoch, elapsed = [], [], 0.0
    if restored is not None:
        _, state, meta = restored
        history, diverged_by_epoch, elapsed = meta["history"], meta["diverged"], meta["wall_time_s"]
        print(f"resuming {workdir} after epoch {len(history)}", flush=True)
    labels = run_labels(grid)
    writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")))
    images_per_epoch = program.steps_per_epoch * config.batch_size
    session_start, first_epoch = time.time(), len(history) + 1
    for epoch in range(first_epoch, config.num_epochs + 1):
        epoch_start = time.time()
        state, sums = train_epoch(program, state, hparams, *splits.train, epoch, train_index)
        jax.block_until_ready(state.step)
        train_seconds = time.time() - epoch_start
        evals = {name: evaluate(program, state, hparams, *pair, config.eval_batch_size, weights=eval_weights[name])
                 for name, pair in splits.eval.items()}
        diverged = np.asarray(state.diverged)
        record = _epoch_record(sums, evals, diverged)
        history.append(_jsonable(record))
        diverged_by_epoch.append(diverged.tolist())
        workdir_lib.write_lines_atomic(os.path.join(workdir, "metrics.jsonl"),
                                       _metrics_lines(history, labels, diverged_by_epoch))
        writer.write_scalars(epoch, {f"{name}/mean": float(np.nanmean(values)) for name, values in record.items()
                                     if np.ndim(values) == 1 and not np.all(np.isnan(values))})
        if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
            meta = {"history": history, "diverged": diverged_by_epoch,
                    "wall_time_s": elapsed + time.time() - session_start}
            checkpoints.save(epoch, state, meta, _best_value(record, config.checkpoint.best_metric))
        speed = images_per_epoch * grid.num_runs / train_seconds
        eta = (time.time() - session_start) / (epoch - first_epoch + 1) * (config.num_epochs - epoch)
        print(_progress_line(epoch, config.num_epochs, record, diverged, speed, eta), flush=True)
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    results = summarize_results(config, grid, history, np.asarray(diverged_by_epoch[-1]),
                                elapsed + time.time() - session_start)
    workdir_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results
