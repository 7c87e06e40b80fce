"""Everything a config must satisfy before a job touches its workdir, reported in one round.

Static checks run here, once per job, and hand on what they built (the run grid); later code
trusts them instead of re-checking. Checks that need a trace (augmentation on these image sizes,
the optimizer chain) run when `program.setup_runs` evaluates the program abstractly, still before
the workdir is claimed. A failed start therefore never leaves anything that blocks the fixed rerun.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from cifar_jax.core import augment
from cifar_jax import checks
from cifar_jax.data import catalog
from cifar_jax.core import execution
from cifar_jax import models
from cifar_jax.core import optim
from cifar_jax.core import runs
from cifar_jax.job import results
from cifar_jax.errors import ConfigError
from cifar_jax.core.splits import Splits, prepare_splits


def validate_config(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int,
                    num_train: int) -> runs.RunGrid:
    """Every static check of a config, reporting all failures at once, and the run grid they
    built; traced checks (augmentation on these image sizes, the optimizer chain) run in
    `setup_runs` by abstract evaluation."""
    grid: list[runs.RunGrid] = []
    checks.all_of(
        lambda: models.validate_model_config(config.model, image_shape, num_classes),
        *(lambda f=f: checks.positive_int(config, f) for f in ("num_epochs", "checkpoint_every_epochs",
                                                                 "eval_batch_size", "batch_size", "checkpoint.keep")),
        lambda: checks.integer(config, "seed", low=0, hint="the first model seed"),
        lambda: _check_data_seed(config),
        lambda: _check_batch_fits(config, num_train),
        lambda: checks.number(config, "checkpoint.every_minutes", low=0, hint="0 = only at epoch ends"),
        lambda: results.check_best_metric(config),
        lambda: optim.check_config(config.optim, steps_per_epoch=max(num_train // _batch_size(config), 1),
                                   num_epochs=max(int(config.num_epochs), 1)),
        lambda: augment.check_config(config.augment),
        lambda: grid.append(runs.make_run_grid(config, image_shape[-1])),
        lambda: execution.validate(config),
    )
    return grid[0]


def _check_data_seed(config: ml_collections.ConfigDict) -> int:
    return checks.integer(config, "data.seed", low=0, hint="it seeds the validation split and folds")


def _batch_size(config: ml_collections.ConfigDict) -> int:
    """batch_size where it is valid, else 1: its own check reports it, the others still run."""
    size = config.batch_size
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 1


def _check_batch_fits(config: ml_collections.ConfigDict, num_train: int) -> None:
    if isinstance(config.batch_size, int) and config.batch_size > num_train:
        raise checks.fail("batch_size", config.batch_size, f"must be <= the {num_train} training images of one run",
                          "lower batch_size or raise data.train_limit")


class CheckedJob(NamedTuple):
    """A job's data and the run grid of its validated config."""

    splits: Splits
    grid: runs.RunGrid


def load_checked_splits(config: ml_collections.ConfigDict) -> CheckedJob:
    """The job's data and its validated run grid, every config problem reported in one round: a
    data-size refusal (e.g. val_size larger than train_limit) comes with the config's others."""
    try:
        _check_data_seed(config)  # numpy's generators raise a bare ValueError on anything else
        splits = prepare_splits(config.data)
    except ConfigError as data_problem:
        name = catalog.check_name(config.data.name)
        guess = max(int(config.data.train_limit or 0), _batch_size(config))
        problems = [str(data_problem)]
        try:
            validate_config(config, catalog.IMAGE_SHAPES[name], len(catalog.CLASS_NAMES[name]), guess)
        except ConfigError as others:
            problems.append(str(others))
        raise ConfigError("\n".join(dict.fromkeys("\n".join(problems).splitlines()))) from None
    return CheckedJob(splits, validate_config(config, splits.image_shape, len(splits.class_names), splits.num_train))
