"""Runs that share a data stream: the (streams x settings) view of the run axis.

Seed i of every setting of a traced grid (within a fold) starts from the same data key, so it sees
the same batches, augmentation and normalized input; only its weights and traced hyperparameters
differ. Training maps over *streams* and, inside each, vmaps over the runs that share it with the
stream's batch left unbatched: XLA then builds the input pipeline and the first layer's patches
once per stream, and the first layer is one matmul with (settings x channels) outputs, forward
and weight gradient. Each run is computed exactly as alone (float tolerance: matmul summation
order), so results equal the flat vmap (tests/test_streams.py).

The run axis is (fold, setting, seed), seeds fastest (`runs.RunGrid`); a stream is (fold, seed),
or the whole fold when `data.shared_order` gives every seed the same data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from cifar_jax.core.runs import RunGrid


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """How one device's block of runs, (folds, settings, seeds) in run order, splits into streams."""

    folds: int
    settings: int
    seeds: int
    shared_order: bool  # every seed of a fold reads the same data: a stream is the whole fold

    @property
    def stream_size(self) -> int:
        return self.settings * (self.seeds if self.shared_order else 1)

    @property
    def num_runs(self) -> int:
        return self.folds * self.settings * self.seeds

    def split(self, tree: Any) -> Any:
        """Per-run leaves (runs, ...) -> (streams, runs of the stream, ...)."""
        def leaf_split(leaf):
            rest = leaf.shape[1:]
            if self.shared_order:
                return leaf.reshape(self.folds, self.stream_size, *rest)
            grid = leaf.reshape(self.folds, self.settings, self.seeds, *rest).swapaxes(1, 2)
            return grid.reshape(self.folds * self.seeds, self.settings, *rest)
        return jax.tree.map(leaf_split, tree)

    def merge(self, tree: Any) -> Any:
        """The inverse of `split`: back to run order."""
        def leaf_merge(leaf):
            rest = leaf.shape[2:]
            if self.shared_order:
                return leaf.reshape(self.num_runs, *rest)
            grid = leaf.reshape(self.folds, self.seeds, self.settings, *rest).swapaxes(1, 2)
            return grid.reshape(self.num_runs, *rest)
        return jax.tree.map(leaf_merge, tree)


def local_layout(grid: RunGrid, shared_order: bool, num_devices: int) -> StreamLayout | None:
    """The stream layout of each device's block of `grid` (the folds actually trained, not
    `data.num_folds`), or None where runs are trained one stream each (the flat vmap): streams of
    one run, or device blocks that would cut a stream or differ in shape (runs padded to the
    device count)."""
    settings, seeds = len(grid.settings), grid.num_seeds
    per_fold = settings * seeds
    if grid.num_runs % num_devices:
        return None
    local = grid.num_runs // num_devices
    if local % per_fold == 0:
        layout = StreamLayout(local // per_fold, settings, seeds, shared_order)
    elif per_fold % local == 0 and local % seeds == 0:
        layout = StreamLayout(1, local // seeds, seeds, shared_order)
    else:
        return None
    return layout if layout.stream_size > 1 else None
