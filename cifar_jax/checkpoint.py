"""Orbax checkpoints of all runs at once: save, resume, restore for evaluation.

A checkpoint is the whole `TrainState` of every run (parameters, batch statistics, dropout
streams, optimizer state, data keys, step, divergence flags) plus the epoch and the metrics
history, so a killed run resumes to bit-identical results. The state is stored as a flat dict
keyed by pytree path, with random keys as raw key data: it restores into any process that
builds the same program, whatever its device count.

Two managers live under WORKDIR/checkpoints: `latest/` keeps the newest `checkpoint.keep`
epochs, `best/` keeps the one epoch with the best mean validation metric over runs.
"""

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from cifar_jax.errors import CheckpointError


def _flatten(tree: Any) -> dict[str, np.ndarray]:
    """Pytree -> {path: array}; typed PRNG keys become their raw uint32 key data."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        flat[jax.tree_util.keystr(path)] = np.asarray(leaf)
    return flat


def _unflatten(flat: dict[str, np.ndarray], like: Any) -> Any:
    """{path: array} -> a pytree shaped like `like` (concrete or abstract); fails naming the paths
    that do not fit."""
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected = {jax.tree_util.keystr(p): leaf for p, leaf in paths_and_leaves}
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint does not match the model: missing {missing[:3]}, unexpected {extra[:3]}; "
            "evaluate or resume with the config the run was trained with")
    leaves = []
    for path, target in expected.items():
        value = flat[path]
        if jax.dtypes.issubdtype(target.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(target) if isinstance(target, jax.Array) else None  # None: the default
            value = jax.random.wrap_key_data(value, impl=impl)
        if value.shape != target.shape:
            raise CheckpointError(f"checkpoint entry {path} has shape {value.shape}, the config gives "
                                  f"{target.shape}; use the config the run was trained with")
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _abstract_flat(like: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The restore target's {path: shape and dtype}; `like` may be concrete or abstract
    (`jax.eval_shape` of the program's init: evaluation needs no initialized weights)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]:
        sharding = getattr(leaf, "sharding", None)  # where to restore: any mesh, any device count
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.eval_shape(jax.random.key_data, leaf)
        flat[jax.tree_util.keystr(path)] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
    return flat


class Checkpoints:
    """The latest-N and best-by-validation Orbax managers of one workdir."""

    def __init__(self, workdir: str, *, keep: int, best_metric: str, read_only: bool = False):
        if keep < 1:
            raise CheckpointError(f"checkpoint.keep={keep} must be at least 1")
        root = epath.Path(os.path.abspath(workdir)) / "checkpoints"  # Orbax refuses relative paths
        self.best_metric = best_metric
        # Readers neither create directories nor save; Orbax's own read_only mode only adds warnings.
        common = dict(create=not read_only, enable_async_checkpointing=not read_only)
        # Each manager synchronizes the processes of a multi-host job at barriers named by the
        # step; two managers saving the same epoch need distinct names.
        barriers = {name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name) for name in ("latest", "best")}
        self.latest = ocp.CheckpointManager(
            root / "latest", item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, multiprocessing_options=barriers["latest"], **common))
        self.best = ocp.CheckpointManager(
            root / "best", item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric],
                best_mode="min" if best_metric.endswith("loss") else "max",
                keep_checkpoints_without_metrics=False, multiprocessing_options=barriers["best"], **common))

    def save(self, epoch: int, state: Any, meta: dict, best_value: float | None) -> None:
        """Saves asynchronously: Orbax copies the arrays to the host, then writes in the background."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(_flatten(state)), meta=ocp.args.JsonSave(meta))
        self.latest.save(epoch, args=args)
        if best_value is not None and np.isfinite(best_value):
            self.best.save(epoch, args=args, metrics={self.best_metric: float(best_value)})

    def best_path(self) -> str | None:
        """The directory of the best checkpoint, or None when there is none yet."""
        step = self.best.best_step()
        return None if step is None else str(self.best.directory / str(step))

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()

    def restore(self, like: Any, which: str = "latest") -> tuple[int, Any, dict] | None:
        """(epoch, state, meta) of the chosen checkpoint, or None when there is none.

        `like` is a freshly initialized state of the same program: it gives the tree structure.
        `which` is 'latest', 'best' or an epoch number. For 'latest', a checkpoint that cannot be
        read (corrupt or truncated) is skipped with a warning and the next older one is tried.
        """
        manager = self.best if which == "best" else self.latest
        if which in ("latest", "best"):
            candidates = sorted(manager.all_steps(), reverse=True)
            if which == "best":
                candidates = [manager.best_step()] if manager.best_step() is not None else []
        else:
            try:
                epoch = int(which)
            except ValueError:
                raise CheckpointError(f"eval.checkpoint={which!r} must be latest, best or an epoch number") from None
            if epoch not in manager.all_steps():
                raise CheckpointError(f"no checkpoint for epoch {epoch}; available: {sorted(manager.all_steps())}")
            candidates = [epoch]
        abstract = _abstract_flat(like)
        for epoch in candidates:
            try:
                restored = manager.restore(epoch, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            except Exception as error:  # noqa: BLE001 -- any read failure means "not usable"
                if which != "latest":
                    raise CheckpointError(f"checkpoint of epoch {epoch} cannot be read: {error}") from None
                logging.warning("checkpoint of epoch %d cannot be read (%s); trying an older one",
                                epoch, str(error).splitlines()[0][:200])
                continue
            return epoch, _unflatten(dict(restored["state"]), like), dict(restored["meta"])
        return None
