"""Examples held out of training: a class-balanced validation split, or stratified k folds."""

from __future__ import annotations

import math

import numpy as np

from cifar_jax import checks


def validation_split(labels: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced (train_idx, val_idx), deterministic in `seed`, both sorted.

    `val_size` >= 1 is a count, in (0, 1) a fraction of the images, 0 means no validation set.
    Each class gives its proportional share (largest remainders round), so small validation sets
    still hold every class in the training proportions.
    """
    labels = _check_labels(labels)
    n = len(labels)
    count = _val_count(val_size, n)
    if count == 0:
        return np.arange(n), np.zeros((0,), np.int64)
    classes, class_counts = np.unique(labels, return_counts=True)
    quotas = count * class_counts / n
    shares = np.floor(quotas).astype(np.int64)
    leftover = count - shares.sum()
    shares[np.argsort(-(quotas - shares), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    val = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, shares)]
    )
    is_val = np.zeros(n, bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _val_count(val_size: float, n: int) -> int:
    val_size = float(val_size)
    if not math.isfinite(val_size) or val_size < 0:
        raise checks.fail("data.val_size", val_size, "must be >= 0", "a count >= 1, a fraction in (0, 1), 0 = none")
    if val_size == 0:
        return 0
    if val_size < 1:
        count = max(1, round(val_size * n))
    elif val_size.is_integer():
        count = int(val_size)
    else:
        raise checks.fail("data.val_size", val_size, "must be a whole count (>= 1) or a fraction in (0, 1)")
    if count >= n:
        raise checks.fail("data.val_size", val_size, f"must leave images to train on (asks for {count} of {n})",
                          "lower --config.data.val_size (or raise data.train_limit)")
    return count


def kfold_indices(labels: np.ndarray, num_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds: [(train_idx, val_idx)] with disjoint val sets that cover every index.

    Images are ordered by class (random within a class) and dealt round-robin, so every fold
    gets each class's images within one of its share, and fold sizes differ by at most one.
    """
    labels = _check_labels(labels)
    n = len(labels)
    if int(num_folds) != num_folds or not 2 <= num_folds <= n:
        raise checks.fail("data.num_folds", num_folds, f"must be a whole number in 2..{n} (the number of images)")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(n), labels))  # by class, random within a class
    fold_of = np.empty(n, np.int64)
    fold_of[order] = np.arange(n) % num_folds
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(int(num_folds))]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    return labels
