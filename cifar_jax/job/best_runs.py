"""Which splits a job scores at which epoch, and each run's weights at its best epoch.

Validation is scored every epoch: it selects each run's best epoch (`checkpoint.best_metric`).
The test split is only reported at the final epoch and at each run's best epoch, so it is scored
then, not every epoch (a third of an epoch's time for the fifth study's CNN on 2 cores): at the
final epoch with the rest, and at the end of the job on the weights each run had at its best
epoch, which `BestRuns` keeps on the devices as training goes (a copy of the parameters and batch
statistics, per run). `eval.test_every_epoch=True` scores it every epoch as before, and so does a
job without a validation split (no best epoch to choose).

Every checkpoint saves the best weights so far beside the state (`checkpoint.BEST_ITEM`), so a
resumed job has them back whatever `checkpoint.keep` has deleted since. A checkpoint of an earlier
version holds none: the best weights then come from the checkpoints of the best epochs, and a run
whose best epoch's checkpoint is gone reports NaN test metrics at its best epoch, with a warning,
never another epoch's numbers.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax.errors import CheckpointError
from cifar_jax.job import results


def test_every_epoch(config: ml_collections.ConfigDict, eval_splits) -> bool:
    """Whether the test split is scored every epoch (asked for, or no validation split to select on)."""
    return bool(config.eval.get("test_every_epoch", False)) or "val" not in eval_splits


def keeps_best(config: ml_collections.ConfigDict, eval_splits) -> bool:
    """Whether each run's best-epoch weights are kept on the devices: the test split waits for them."""
    return "test" in eval_splits and not test_every_epoch(config, eval_splits)


def splits_to_score(config: ml_collections.ConfigDict, eval_splits, epoch: int) -> list[str]:
    """The held-out splits scored after `epoch`: validation always, test every epoch or at the last."""
    every = test_every_epoch(config, eval_splits)
    return [name for name in eval_splits if name != "test" or every or epoch == config.num_epochs]


def _where(improved: jax.Array, new: Any, old: Any) -> Any:
    """Per run (leading axis), `new` where it improved, else `old`."""
    return jax.tree.map(lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


# New arrays, never aliases of the state that the next training call donates. The kept copy is
# donated when replaced, so an update holds no third copy of the weights (`core/memory.py`).
_select = jax.jit(_where)
_replace = jax.jit(_where, donate_argnums=2)


class BestRuns:
    """Each run's best value of `metric` so far, its epoch, and its weights then (padded and
    sharded like the state). The rule is `results.best_epoch_index`'s: NaN never wins, ties keep
    the earlier epoch."""

    def __init__(self, metric: str, on_devices):
        self.metric, self.on_devices = metric, on_devices
        self.values: np.ndarray | None = None
        self.epochs: np.ndarray | None = None
        self.weights: Any = None
        self.missing: np.ndarray | None = None  # runs whose best weights were not recovered on resume

    def _improved(self, filled: np.ndarray) -> np.ndarray:
        if self.values is None:
            return np.ones(filled.shape, bool)
        return filled < self.values if results.lower_is_better(self.metric) else filled > self.values

    def update(self, epoch: int, record: dict, state) -> None:
        """After an epoch: runs whose `metric` improved take this epoch's weights."""
        filled = results.nan_as_worst(record[self.metric], self.metric)
        improved = self._improved(filled)
        weights = (state.params, state.model_state)
        improved_on_devices = self.on_devices(jnp.asarray(improved))
        self.weights = (_select(improved_on_devices, weights, weights) if self.weights is None
                        else _replace(improved_on_devices, weights, self.weights))
        self.values = np.where(improved, filled, filled if self.values is None else self.values)
        self.epochs = np.where(improved, epoch, 0 if self.epochs is None else self.epochs)
        if self.missing is not None:
            self.missing &= ~improved

    def state(self, state):
        """`state` with each run's best weights."""
        params, model_state = self.weights
        return state._replace(params=params, model_state=model_state)

    def resume(self, history: list[dict], state, restore, saved: Any = None) -> None:
        """Rebuilds the best epochs from the history, and their weights: `saved` (the best weights
        the resumed checkpoint holds, placed like the state), else from the checkpoints of those
        epochs: `restore(epoch)` is that epoch's (real-run) state or raises CheckpointError."""
        for epoch, record in enumerate(history, start=1):
            filled = results.nan_as_worst(record[self.metric], self.metric)
            improved = self._improved(filled)
            self.values = np.where(improved, filled, filled if self.values is None else self.values)
            self.epochs = np.where(improved, epoch, 0 if self.epochs is None else self.epochs)
        if self.epochs is None:
            return
        self.missing = np.zeros(self.epochs.shape, bool)
        if saved is not None:
            self.weights = saved
            return
        self.weights = jax.tree.map(jnp.copy, (state.params, state.model_state))  # a copy: `_replace` donates it
        for epoch in sorted(set(self.epochs.tolist())):
            runs = self.epochs == epoch
            try:
                old = self.on_devices(restore(int(epoch)))
            except CheckpointError as problem:
                logging.warning("the best epoch %d of runs %s has no checkpoint left (%s): their test metrics "
                                "at the best epoch will be NaN", epoch, np.flatnonzero(runs).tolist(), problem)
                self.missing |= runs
                continue
            self.weights = _replace(self.on_devices(jnp.asarray(runs)), (old.params, old.model_state), self.weights)

    def best_scores(self, final_epoch: int, final: dict[str, Any], score) -> dict[str, np.ndarray]:
        """Test metrics at each run's best epoch as `best_test_*`: `final` (the final epoch's
        scores) when every run's best is the final epoch, else `score()` of the best weights."""
        recovered = self.missing is None or not self.missing.any()
        scores = final if recovered and bool(np.all(self.epochs == final_epoch)) else score()
        out = {}
        for name in results.RECORDED_EVAL_METRICS:
            values = np.asarray(scores[name], np.float64)
            if self.missing is not None:
                values = np.where(self.missing.reshape((-1,) + (1,) * (values.ndim - 1)), np.nan, values)
            out[f"best_test_{name}"] = values
        return out
