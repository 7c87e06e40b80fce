"""Data staging: the data set carved into the splits a job trains and evaluates on, on the device.

Training and evaluation both call `prepare_splits`, so `--mode=eval` scores exactly the examples
training held out (with k folds: each fold's own held-out examples). Images stay uint8 on the
device; `to_unit` / `standardize` turn a batch into model input inside the compiled step.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax.data import holdout
from cifar_jax.data.datasets import load_dataset
from cifar_jax.errors import DataError
from cifar_jax.core.runs import RunGrid

SPLITS = ("test", "val", "train")


class Examples(NamedTuple):
    images: jax.Array  # uint8 NHWC
    labels: jax.Array  # int32


@dataclasses.dataclass(frozen=True)
class Splits:
    """The device-resident arrays of one job.

    With k-fold cross-validation, `train` is the whole pool, fold f trains on
    `fold_train_index[f]` and is validated on the pool examples where `fold_val_mask[f]` is 1.
    """

    train: Examples
    eval: dict[str, Examples]  # 'val' and/or 'test'
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    fold_train_index: jax.Array | None = None  # (folds, n): equal-length index sets
    fold_val_mask: jax.Array | None = None  # (folds, pool size)

    @property
    def num_train(self) -> int:
        """Examples one run trains on per epoch."""
        return self.train.images.shape[0] if self.fold_train_index is None else self.fold_train_index.shape[1]


def to_unit(images: jax.Array) -> jax.Array:
    """uint8 -> float32 in [0, 1] (PyTorch's ToTensor): what augmentation works on."""
    return images.astype(jnp.float32) / 255.0


def standardize(images01: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """PyTorch's Normalize; `mean`/`std` are per-run traced values of shape (C,)."""
    return (images01 - mean) / std


def to_model_input(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """The one uint8 -> model-input function (evaluation, prediction)."""
    if images.dtype != jnp.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}: pass the raw images, not normalized ones")
    return standardize(to_unit(images), mean, std)


def fold_arrays(labels: np.ndarray, num_folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified folds as equal-length train index sets (trimmed by at most one example, since
    fold sizes differ by at most one) and 0/1 validation masks."""
    folds = holdout.kfold_indices(labels, num_folds, seed)
    length = min(len(train_idx) for train_idx, _ in folds)
    train_index = np.stack([train_idx[:length] for train_idx, _ in folds]).astype(np.int32)
    val_mask = np.zeros((num_folds, len(labels)), np.float32)
    for f, (_, val_idx) in enumerate(folds):
        val_mask[f, val_idx] = 1.0
    return train_index, val_mask


def _on_device(images: np.ndarray, labels: np.ndarray) -> Examples:
    return Examples(jnp.asarray(images), jnp.asarray(labels, jnp.int32))


def prepare_splits(data_config: ml_collections.ConfigDict) -> Splits:
    """Loads the data set and carves validation (a split, or k folds); arrays go to the device once."""
    dataset = load_dataset(data_config)
    eval_splits, folds = {}, {}
    if data_config.num_folds:
        train = _on_device(dataset.train_images, dataset.train_labels)
        eval_splits["val"] = train
        train_index, val_mask = fold_arrays(dataset.train_labels, data_config.num_folds, data_config.seed)
        folds = {"fold_train_index": jnp.asarray(train_index), "fold_val_mask": jnp.asarray(val_mask)}
    else:
        train_idx, val_idx = holdout.validation_split(dataset.train_labels, data_config.val_size, data_config.seed)
        train = _on_device(dataset.train_images[train_idx], dataset.train_labels[train_idx])
        if len(val_idx):
            eval_splits["val"] = _on_device(dataset.train_images[val_idx], dataset.train_labels[val_idx])
    if dataset.test_images is not None:
        eval_splits["test"] = _on_device(dataset.test_images, dataset.test_labels)
    else:
        logging.warning("%s has no test split (%s): test metrics are skipped.", dataset.name, dataset.source)
    return Splits(train=train, eval=eval_splits, image_shape=dataset.image_shape, class_names=dataset.class_names,
                  **folds)


class RunSubsets(NamedTuple):
    """Each run's own examples of a split, gathered per run instead of scored everywhere and
    masked: with k folds a run scores its 1/k of the pool, not all of it (5x less evaluation work).
    A run with fewer examples than the longest pads with weight 0."""

    index: jax.Array  # (runs, m) int32 into the split's examples
    weights: jax.Array  # (runs, m) each example's weight, 0 for padding


def run_subsets(weights: jax.Array | np.ndarray) -> RunSubsets:
    """Per-run weights (runs, n) -> each run's examples with a nonzero weight, in order (host-side:
    built once per job, before the runs are placed on the devices)."""
    weights = np.asarray(weights, np.float32)
    chosen = [np.flatnonzero(row) for row in weights]
    length = max(1, max(len(c) for c in chosen))  # one all-padding column when no run has an example
    index, kept = np.zeros((len(chosen), length), np.int32), np.zeros((len(chosen), length), np.float32)
    for run, examples in enumerate(chosen):
        index[run, :len(examples)] = examples
        kept[run, :len(examples)] = weights[run, examples]
    return RunSubsets(jnp.asarray(index), jnp.asarray(kept))


def run_train_index(splits: Splits, grid: RunGrid) -> jax.Array | None:
    """Each run's training indices into `splits.train` (its fold's), or None: all of them."""
    return None if splits.fold_train_index is None else splits.fold_train_index[jnp.asarray(grid.fold_index)]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"eval.split={split!r} is unknown; use one of {', '.join(SPLITS)}")
    return split


def examples_for(splits: Splits, grid: RunGrid, split: str) -> tuple[Examples, jax.Array | None]:
    """The examples of `split` and per-run 0/1 weights selecting each run's own (None: all): with
    k folds, 'val' is each fold's held-out part of the pool and 'train' the rest."""
    if check_split(split) == "train":
        if splits.fold_val_mask is None:
            return splits.train, None
        return splits.train, 1.0 - splits.fold_val_mask[jnp.asarray(grid.fold_index)]
    if split not in splits.eval:
        fix = ("point --config.data.dir at a directory with test.npz (or the official test files), or use "
               "--config.eval.split=val") if split == "test" else "train with data.val_size > 0 or data.num_folds"
        raise DataError(f"the data set has no {split} split; {fix}")
    if split == "val" and splits.fold_val_mask is not None:
        return splits.eval["val"], splits.fold_val_mask[jnp.asarray(grid.fold_index)]
    return splits.eval[split], None


def eval_examples(data_config: ml_collections.ConfigDict, grid: RunGrid, split: str
                  ) -> tuple[Examples, jax.Array | None]:
    """`examples_for` a saved run: 'test' needs only the test files (a test set may live apart from
    the training data); 'val' and 'train' are carved from train exactly as training carved them."""
    if check_split(split) != "test":
        return examples_for(prepare_splits(data_config), grid, split)
    dataset = load_dataset(data_config)
    if dataset.test_images is None:
        raise DataError(f"{dataset.source} has no test split; point --config.data.dir at a directory with "
                        "test.npz (or the official test files), or use --config.eval.split=val")
    return _on_device(dataset.test_images, dataset.test_labels), None
