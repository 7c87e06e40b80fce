"""What a run is: one model = a fold, a setting of the traced grid and a seed.

All runs of a config share one compiled program; this module says which runs that program
trains (`RunGrid`), with which traced hyperparameters (validated here, for grids too), from which
keys (`run_keys`) and under which identity in every record (`RunGrid.ids`). It builds no model
and compiles nothing, so sweeps and reports can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax import checks, config_paths
from cifar_jax.data.normalization import normalization_constants
from cifar_jax.errors import ConfigError

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
    folds: tuple[int, ...]  # the cross-validation folds trained (all, or data.folds); () without
    hparams: dict[str, np.ndarray]  # per run, leading axis = run

    @property
    def num_folds(self) -> int:
        """Folds trained by this program (1 without cross-validation)."""
        return max(len(self.folds), 1)

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
        return np.asarray(self.folds or (0,))[np.arange(self.num_runs) // (self.num_seeds * len(self.settings))]

    def ids(self) -> list[dict[str, Any]]:
        """Per-run identification written next to every metric: seed, setting and its grid values."""
        folds = (lambda r: {"fold": int(self.fold_index[r])}) if self.folds else (lambda r: {})
        return [{"run": r, "seed_index": int(self.seed_index[r]), "setting": int(self.setting_index[r]), **folds(r),
                 **self.settings[self.setting_index[r]]} for r in range(self.num_runs)]


def traced_values(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The traced hyperparameters a config sets when no grid overrides them, validated."""
    return {
        "learning_rate": checks.number(config, "optim.learning_rate", above=0),
        "weight_decay": checks.number(config, "optim.weight_decay", low=0),
        "momentum": checks.number(config, "optim.momentum", low=0, below=1),
        "label_smoothing": checks.number(config, "optim.label_smoothing", low=0, below=1),
        "mixup_alpha": checks.number(config, "augment.mixup_alpha", low=0, hint="0 = off"),
        "dropout_rate": checks.number(config, "model.dropout_rate", low=0, below=1,
                                      hint="1.0 would drop every unit"),
    }


def run_hparams(config: ml_collections.ConfigDict, num_channels: int) -> dict[str, Any]:
    """A run's traced inputs: the hyperparameters plus the normalization constants."""
    mean, std = normalization_constants(config.data.mean, config.data.std, num_channels)
    return {**traced_values(config), "mean": mean, "std": std}


def with_setting(config: ml_collections.ConfigDict, setting: dict[str, float]) -> ml_collections.ConfigDict:
    """The config with one grid setting written into the fields it overrides."""
    return config_paths.with_values(config, {TRACED_HPARAMS[name]: float(value) for name, value in setting.items()})


def grid_settings(config: ml_collections.ConfigDict) -> tuple[dict[str, float], ...]:
    """`config.hparam_grid` (name -> values) expanded as a product, in sorted name order."""
    grid = dict(config.get("hparam_grid", {}) or {})
    for name, values in grid.items():
        if name not in TRACED_HPARAMS:
            raise ConfigError(
                f"hparam_grid.{name} is not a traced hyperparameter; choose from {', '.join(TRACED_HPARAMS)} "
                "(shape-changing settings belong in a sweep)")
        if not isinstance(values, (tuple, list)) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"hparam_grid.{name}={values!r} must be a non-empty tuple of numbers; "
                              f"e.g. hparam_grid.{name}=(0.1, 0.01)")
    names = sorted(grid)
    return tuple(dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names)))


def built_dropout_rate(config: ml_collections.ConfigDict) -> float:
    """The rate a model is built with: dropout layers exist only where the built rate is > 0, so a
    traced rate grid needs them built at its largest value."""
    return float(max([config.model.dropout_rate, *config.hparam_grid.get("dropout_rate", ())]))


def selected_folds(data_config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The cross-validation folds a job trains: `data.folds` (0-based) of `data.num_folds`, or all
    of them when data.folds is empty; () without cross-validation. One fold alone lets a chain of
    jobs train the folds one after another (the leaky protocol, with `init_from`)."""
    num_folds = int(data_config.num_folds)
    chosen = tuple(data_config.get("folds", ()) or ())
    if not chosen:
        return tuple(range(num_folds)) if num_folds else ()
    if num_folds < 2 or len(set(chosen)) != len(chosen) or any(
            isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < num_folds for f in chosen):
        raise ConfigError(f"data.folds={chosen!r} must name distinct folds 0..{num_folds - 1} of data.num_folds="
                          f"{num_folds}" + ("; set data.num_folds >= 2" if num_folds < 2 else ""))
    return chosen


def make_run_grid(config: ml_collections.ConfigDict, num_channels: int) -> RunGrid:
    """Expands `config.hparam_grid` and the seeds (and folds) into per-run arrays, checking every
    setting as if it were the config's own value."""
    checks.positive_int(config, "num_seeds")
    settings = grid_settings(config)
    per_setting = [run_hparams(with_setting(config, s), num_channels) for s in settings]
    folds = selected_folds(config.data)
    num_folds = max(len(folds), 1)

    def per_run(name: str) -> np.ndarray:
        by_setting = np.stack([np.asarray(h[name], np.float32) for h in per_setting])
        by_seed = np.repeat(by_setting, config.num_seeds, axis=0)  # seeds fastest within a setting
        return np.tile(by_seed, (num_folds,) + (1,) * (by_seed.ndim - 1))  # folds outermost

    hparams = {name: per_run(name) for name in per_setting[0]}
    return RunGrid(settings=settings, num_seeds=config.num_seeds, folds=folds, hparams=hparams)


def run_keys(seed: int, seed_index: np.ndarray, fold_index: np.ndarray | None = None) -> jax.Array:
    """Per-run key data: run i of every setting shares seed i, so settings are paired comparisons;
    each cross-validation fold f > 0 starts from a fresh initialization of its own, while fold 0
    keeps the plain key, so fold 0 of a cross-validated run equals the run without folds."""
    folds = np.zeros_like(seed_index) if fold_index is None else fold_index
    return _derived_keys(jax.random.key(seed), np.asarray(seed_index, np.int32), np.asarray(folds, np.int32))


@jax.jit
def _derived_keys(base: jax.Array, seed_index: jax.Array, fold_index: jax.Array) -> jax.Array:
    """`run_keys`' derivation as one program: eagerly, its dozen small ops compiled one by one
    (~1 s of a small job's start-up on 2 cores)."""
    def key(i, fold):
        run_key = jax.random.fold_in(base, i)
        return jax.random.key_data(jax.lax.cond(fold > 0, lambda: jax.random.fold_in(run_key, fold), lambda: run_key))
    return jax.vmap(key)(seed_index, fold_index)
