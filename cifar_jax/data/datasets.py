"""Loading `config.data`: from local files or TFDS, trimmed to the configured limits.

Data sets are whole uint8 NHWC arrays in host memory (CIFAR-10 180 MB, Fashion-MNIST 55 MB),
small enough to be moved to the device once and stay there, so nothing here builds a per-step
pipeline. The modules beside this one: `catalog` (names, shapes, the `Dataset` type),
`local_files` (+ `safe_pickle`), `tfds_source`, `holdout` (validation split, k folds) and
`normalization`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cifar_jax.data import local_files, tfds_source
from cifar_jax.data.catalog import Dataset, check_name
from cifar_jax import checks
from cifar_jax.errors import ConfigError

SOURCES = ("auto", "local", "tfds")


def load_dataset(data_config: Any) -> Dataset:
    """Loads `config.data` from its source, trims it to the configured limits and validates it.

    An explicit `data.dir` is authoritative: when it holds no data set the load fails at once
    (a mistyped path is the commonest first mistake), never falling back to a slow download.
    'auto' uses TFDS only when `data.dir` is empty.
    """
    name = check_name(data_config.name)
    source = data_config.source
    local_dir = str(data_config.dir or "")
    tfds_dir = str(data_config.tfds_data_dir or "") or None
    checks.one_of("data.source", source, SOURCES)
    if source == "local" and not local_dir:
        raise ConfigError(
            f"data.source='local' needs --config.data.dir=DIR, a directory with the {name} files "
            "(train.npz, the official archives or IDX files; see the README)"
        )
    if source == "tfds" or not local_dir:
        dataset = tfds_source.load_tfds(name, tfds_dir)
    else:
        dataset = local_files.load_local(name, local_dir)
    return _apply_limits(dataset, data_config.train_limit, data_config.test_limit)


def _apply_limits(dataset: Dataset, train_limit: int, test_limit: int) -> Dataset:
    """Keeps the first N images of each split; copies so the untrimmed arrays can be freed."""
    train_limit, test_limit = int(train_limit), int(test_limit)
    for field, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        checks.whole(f"data.{field}", limit, low=0, hint="0 = all images")
    changes = {}
    if train_limit and train_limit < len(dataset.train_labels):
        changes["train_images"] = dataset.train_images[:train_limit].copy()
        changes["train_labels"] = dataset.train_labels[:train_limit].copy()
    if test_limit and dataset.test_labels is not None and test_limit < len(dataset.test_labels):
        changes["test_images"] = dataset.test_images[:test_limit].copy()
        changes["test_labels"] = dataset.test_labels[:test_limit].copy()
    return dataclasses.replace(dataset, **changes) if changes else dataset

