"""Orbax checkpoints of all runs at once: save, resume, restore for evaluation.

A checkpoint is the whole `TrainState` of every run (parameters, batch statistics, dropout
streams, optimizer state, data keys, step, divergence flags), each run's weights at its best epoch
so far where the job keeps them for the test split (`BEST_ITEM`), and a small meta (epochs done,
wall time; the metrics history stays in metrics.jsonl, so the meta does not grow with the epochs),
so a killed run resumes to bit-identical results. The state is stored as a flat dict
keyed by pytree path, with random keys as raw key data: it restores into any process that
builds the same program, whatever its device count.

Two managers live under WORKDIR/checkpoints: `latest/` keeps the newest `checkpoint.keep`
epochs, `best/` keeps the one epoch with the best mean validation metric over runs.

Orbax does not verify what it reads back, so each checkpoint's meta carries a SHA-256 of the
state's array bytes: a checkpoint whose bytes were overwritten is never evaluated or resumed as
if it were fine.
"""

import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cifar_jax.errors import CheckpointError, brief
from cifar_jax.job import storage


def _flatten(tree: Any) -> dict[str, Any]:
    """Pytree -> {path: array}, arrays left where they are (a sharded jax.Array stays sharded:
    Orbax writes each process's shards); typed PRNG keys become their raw uint32 key data."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        flat[jax.tree_util.keystr(path)] = leaf
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


def state_digest(flat: dict[str, Any]) -> str:
    """SHA-256 over every entry's path, dtype, shape and bytes, in sorted path order."""
    digest = hashlib.sha256()
    for path in sorted(flat):
        array = np.ascontiguousarray(np.asarray(flat[path]))
        digest.update(f"{path}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@functools.partial(jax.jit, static_argnums=1)
def _checksums(flat: dict[str, jax.Array], num_runs: int) -> dict[str, jax.Array]:
    """Per entry, a position-weighted sum (mod 2**32) of the 32-bit words of its first `num_runs`
    rows: any changed word changes it (the weights are odd). Computed where the shards live: each
    device reduces its own, only scalars move (no whole-state copy onto a device or the host)."""
    def words(x: jax.Array) -> jax.Array:
        if x.dtype == jnp.bool_ or x.dtype.itemsize == 1:
            return x.astype(jnp.uint32)
        if x.dtype.itemsize == 2:
            return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte types gain a trailing axis of 2

    def checksum(leaf: jax.Array) -> jax.Array:
        bits = words(jnp.asarray(leaf)[:num_runs])
        position, stride = jnp.zeros(bits.shape, jnp.uint32), 1
        for axis in reversed(range(bits.ndim)):  # the row-major index, without a reshape of the sharded axis
            position = position + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride)
            stride *= bits.shape[axis]
        return jnp.sum(bits * (position * jnp.uint32(2654435761) + jnp.uint32(1)), dtype=jnp.uint32)
    return {path: checksum(leaf) for path, leaf in flat.items()}


def state_checksum(flat: dict[str, Any], num_runs: int) -> str:
    """The checksum of a checkpoint's first `num_runs` runs (the real ones), independent of the
    padding and of how the arrays are sharded."""
    sums = jax.device_get(_checksums(flat, num_runs))
    return "".join(f"{int(sums[path]):08x}" for path in sorted(sums))


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


DIGEST_KEY = "state_sha256"  # in the meta of earlier versions' checkpoints (of real runs, gathered)
# In each checkpoint's meta, removed from what `restore` returns: the real runs (the state's first
# rows; the rest is padding to the saving job's device count) and their `state_checksum`.
RUNS_KEY = "num_runs"
CHECKSUM_KEY = "state_checksum"
# A job that scores its test split on each run's best weights (job/best_runs.py) saves those
# weights as a third item, so a resumed job has them whatever `checkpoint.keep` deleted since.
BEST_ITEM = "best_weights"
BEST_CHECKSUM_KEY = "best_weights_checksum"


def _leading(flat: dict[str, Any]) -> int:
    """The run count of a flat state (the leading axis every entry, an array or a shape, shares)."""
    first = next(iter(flat.values()), (0,))
    return int((first if isinstance(first, tuple) else first.shape)[0])


def _check_fits(saved: dict[str, tuple[int, ...]], abstract: dict[str, Any], saved_runs: int, num_runs: int) -> None:
    """A one-line CheckpointError when the checkpoint holds other entries, other per-run shapes
    or another number of runs than this job (another model, optimizer or grid)."""
    missing, extra = sorted(set(abstract) - set(saved)), sorted(set(saved) - set(abstract))
    if missing or extra:
        raise CheckpointError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {extra[:3]}; "
                              "evaluate or resume with the config the run was trained with")
    if saved_runs != num_runs:
        raise CheckpointError(f"checkpoint holds {saved_runs} runs, the config gives {num_runs}; "
                              "use the config the run was trained with")
    for path, target in abstract.items():
        if saved[path][1:] != tuple(target.shape[1:]):
            raise CheckpointError(f"checkpoint entry {path} has shape {(saved_runs, *saved[path][1:])}, the config "
                                  f"gives {(num_runs, *target.shape[1:])}; use the config the run was trained with")


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    """A manager's item handlers, known before its first save or restore (`item_metadata` reads
    the saved shapes through them)."""
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
            BEST_ITEM: ocp.StandardCheckpointHandler()}


class Checkpoints:
    """The latest-N and best-by-validation Orbax managers of one workdir."""

    def __init__(self, workdir: str, *, keep: int, best_metric: str, read_only: bool = False):
        if keep < 1:
            raise CheckpointError(f"checkpoint.keep={keep} must be at least 1")
        root = storage.path(workdir) / "checkpoints"  # absolute: Orbax refuses relative paths
        self.root = root
        self.last_save_time = time.time()  # for checkpoint.every_minutes
        self.best_metric = best_metric
        # Readers neither create directories nor save; Orbax's own read_only mode only adds warnings.
        common = dict(create=not read_only, enable_async_checkpointing=not read_only)
        # Each manager synchronizes the processes of a multi-host job at barriers named by the
        # step; two managers saving the same epoch need distinct names.
        barriers = {name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
                    for name in ("latest", "best", "partial")}
        self.latest = ocp.CheckpointManager(
            root / "latest", item_handlers=_handlers(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, multiprocessing_options=barriers["latest"], **common))
        self.best = ocp.CheckpointManager(
            root / "best", item_handlers=_handlers(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric],
                best_mode="min" if best_metric.endswith("loss") else "max",
                keep_checkpoints_without_metrics=False, multiprocessing_options=barriers["best"], **common))
        # One checkpoint inside an epoch (preemption, checkpoint.every_minutes), by global step;
        # superseded by the next whole epoch's checkpoint.
        self.partial = ocp.CheckpointManager(
            root / "partial", item_handlers=_handlers(),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, multiprocessing_options=barriers["partial"], **common))

    def save_partial(self, global_step: int, state: Any, meta: dict, num_runs: int | None = None,
                     best_weights: Any = None) -> None:
        """A checkpoint inside an epoch: `meta` says the epoch, the step within it and the sums so far.
        A step already saved is kept as it is (an epoch's last chunk saved it before a stop request
        seen during its evaluation saves again: `train._save_partial`)."""
        if global_step in self.partial.all_steps():
            return
        with self._write_errors(None):
            self.partial.save(global_step, args=self._args(state, meta, num_runs, best_weights))
        self.last_save_time = time.time()

    def restore_partial(self, like: Any, num_runs: int | None = None) -> tuple[Any, dict] | None:
        """(state, meta) of the mid-epoch checkpoint, or None when there is none or it is unusable
        (then training resumes from the last whole epoch, with a warning)."""
        abstract = _abstract_flat(like)
        num_runs = _leading(abstract) if num_runs is None else num_runs
        for step in sorted(self.partial.all_steps(), reverse=True):
            try:
                flat, meta = self._read(self.partial, step, abstract, num_runs)
            except _Unusable as problem:
                logging.warning("mid-epoch checkpoint %d %s; resuming from the last whole epoch", step, problem)
                return None
            return _unflatten(flat, like), meta
        return None

    def drop_partial(self) -> None:
        """Deletes mid-epoch checkpoints once a whole epoch's checkpoint supersedes them."""
        for step in self.partial.all_steps():
            self.partial.delete(step)

    @staticmethod
    def _args(state: Any, meta: dict, num_runs: int | None = None, best_weights: Any = None) -> ocp.args.Composite:
        """The sharded state as it is (padding included), the best weights where given, and the meta
        with the real-run count and the checksums of the real runs."""
        flat = _flatten(state)
        num_runs = _leading(flat) if num_runs is None else num_runs
        meta = {**meta, RUNS_KEY: num_runs, CHECKSUM_KEY: state_checksum(flat, num_runs)}
        items = {"state": ocp.args.StandardSave(flat)}
        if best_weights is not None:
            best = _flatten(best_weights)
            meta[BEST_CHECKSUM_KEY] = state_checksum(best, num_runs)
            items[BEST_ITEM] = ocp.args.StandardSave(best)
        return ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items)

    def save(self, epoch: int, state: Any, meta: dict, best_value: float | None, num_runs: int | None = None,
             best_weights: Any = None) -> None:
        """Saves asynchronously: Orbax copies each process's shards to its host, then writes them in
        the background. `state` may hold padding runs after its first `num_runs` (default: all
        real); they are saved too (no gather to slice them off) and dropped by `restore`.
        `best_weights`: each run's weights at its best epoch so far (`restore_best_weights`).

        A write that fails (disk full, unwritable workdir) is a one-line CheckpointError, raised
        here or by `wait`; Orbax writes into a temporary directory first, so earlier checkpoints
        stay intact.
        """
        args = self._args(state, meta, num_runs, best_weights)
        self.last_save_time = time.time()
        with self._write_errors(epoch):
            self.latest.save(epoch, args=args)
            if best_value is not None and np.isfinite(best_value):
                self.best.save(epoch, args=args, metrics={self.best_metric: float(best_value)})

    def best_path(self) -> str | None:
        """The directory of the best checkpoint, or None when there is none yet."""
        step = self.best.best_step()
        return None if step is None else str(self.best.directory / str(step))

    def wait(self) -> None:
        with self._write_errors(None):
            for manager in (self.latest, self.best, self.partial):
                manager.wait_until_finished()

    @contextlib.contextmanager
    def _write_errors(self, epoch: int | None) -> Iterator[None]:
        """Turns a failed write into a one-line CheckpointError naming the epochs still intact."""
        try:
            yield
        except CheckpointError:
            raise
        except Exception as error:  # noqa: BLE001 -- Orbax wraps OSErrors of its writer threads variously
            which = f"epoch {epoch}" if epoch is not None else "a checkpoint"
            intact = [step for step in self.latest.all_steps() if step != epoch]
            kept = f"epochs {sorted(intact)} are intact" if intact else "no earlier checkpoint exists"
            raise CheckpointError(f"cannot save {which} in {self.root} ({brief(error, 160)}); free disk space or fix "
                                  f"the permissions, then rerun to resume ({kept})") from None

    def close(self) -> None:
        for manager in (self.latest, self.best, self.partial):
            manager.close()

    def restore(self, like: Any, which: str = "latest", num_runs: int | None = None) -> tuple[int, Any, dict] | None:
        """(epoch, state, meta) of the chosen checkpoint, or None when there is none.

        `like` (concrete or abstract) gives the tree structure, shapes and shardings: the state of
        this job, whose first `num_runs` runs (default: all) are real. Each process reads the
        shards its devices hold, on any device count; the saved padding is cut or extended to
        `like`'s (the padding runs are never reported).
        `which` is 'latest', 'best' or an epoch number. For 'latest', a checkpoint that cannot be
        read or fails its checksum is skipped with a warning and the next older one is tried; when
        none is usable, and for 'best' or an epoch, it is a one-line CheckpointError.
        """
        manager = self.best if which == "best" else self.latest
        if which == "latest":
            candidates = sorted(manager.all_steps(), reverse=True)
        elif which == "best":
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
        num_runs = _leading(abstract) if num_runs is None else num_runs
        problems = []
        for epoch in candidates:
            try:
                flat, meta = self._read(manager, epoch, abstract, num_runs)
            except _Unusable as problem:
                if which != "latest":
                    name = f"best checkpoint (epoch {epoch})" if which == "best" else f"checkpoint of epoch {epoch}"
                    raise CheckpointError(f"{name} {problem}; evaluate another epoch with "
                                          "--config.eval.checkpoint=N") from None
                logging.warning("checkpoint of epoch %d %s; trying an older one", epoch, problem)
                problems.append(epoch)
                continue
            return epoch, _unflatten(flat, like), meta
        if problems:
            raise CheckpointError(
                f"no usable checkpoint in {self.root / 'latest'}: epochs {problems} are unreadable or corrupt; "
                "retrain with --config.checkpoint.overwrite=True (the old run is moved aside)")
        return None

    def restore_best_weights(self, like: Any, epoch: int | None, num_runs: int) -> Any:
        """The best weights saved with the whole epoch `epoch`'s checkpoint (None: the newest
        mid-epoch one), shaped and sharded like `like`; None when that checkpoint has none (saved
        by a job that kept none, or by an earlier version) or they fail their checksum."""
        manager = self.partial if epoch is None else self.latest
        step = manager.latest_step() if epoch is None else epoch
        if step is None:
            return None
        abstract = _abstract_flat(like)
        try:
            meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            if BEST_CHECKSUM_KEY not in meta:
                return None
            flat = dict(manager.restore(step, args=ocp.args.Composite(
                **{BEST_ITEM: ocp.args.StandardRestore(abstract, strict=False)}))[BEST_ITEM])
        except Exception as error:  # noqa: BLE001 -- any read failure means "not usable"
            logging.warning("the best weights saved at step %d cannot be read (%s)", step, brief(error, 160))
            return None
        if state_checksum(flat, num_runs) != meta[BEST_CHECKSUM_KEY]:
            logging.warning("the best weights saved at step %d fail their checksum", step)
            return None
        return _unflatten(flat, like)

    @staticmethod
    def _read(manager: ocp.CheckpointManager, epoch: int, abstract: dict, num_runs: int) -> tuple[dict, dict]:
        """The flat state (shaped and sharded like `abstract`) and meta of one checkpoint;
        CheckpointError when it does not fit, _Unusable when unreadable or not as saved."""
        try:
            meta = dict(manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            saved = {path: tuple(entry.shape) for path, entry in manager.item_metadata(epoch)["state"].items()}
        except Exception as error:  # noqa: BLE001 -- any read failure means "not usable"
            raise _Unusable(f"cannot be read ({brief(error, 160)})") from None
        _check_fits(saved, abstract, int(meta.pop(RUNS_KEY, _leading(saved))), num_runs)
        try:  # strict=False: the run axis is cut or zero-padded to this job's padding
            restored = manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract, strict=False)))
        except Exception as error:  # noqa: BLE001
            raise _Unusable(f"cannot be read ({brief(error, 160)})") from None
        flat = dict(restored["state"])
        checksum, digest = meta.pop(CHECKSUM_KEY, None), meta.pop(DIGEST_KEY, None)  # None: not recorded
        meta.pop(BEST_CHECKSUM_KEY, None)  # `restore_best_weights` checks it
        if checksum is not None and state_checksum(flat, num_runs) != checksum:
            raise _Unusable("fails its checksum (its files were modified or damaged)")
        if digest is not None and state_digest({p: np.asarray(v)[:num_runs] for p, v in flat.items()}) != digest:
            raise _Unusable("fails its checksum (its files were modified or damaged)")  # an earlier version's
        return flat, meta


def warm_start_state(source: str, like: Any, best_metric: str, num_runs: int | None = None) -> Any:
    """The latest checkpointed state of workdir `source`, shaped like `like` (this job's runs, the
    first `num_runs` real),
    for `init_from`: a one-line CheckpointError when `source` has no checkpoint or its runs do
    not fit this job's (another model, optimizer or number of runs)."""
    if not storage.isdir(os.path.join(source, "checkpoints", "latest")):
        raise CheckpointError(f"init_from: {source} has no checkpoint; train that run first")
    checkpoints = Checkpoints(source, keep=1, best_metric=best_metric, read_only=True)
    try:
        restored = checkpoints.restore(like, num_runs=num_runs)
    except CheckpointError as error:
        raise CheckpointError(f"init_from: {source} does not fit this job ({error})") from None
    finally:
        checkpoints.close()
    if restored is None:
        raise CheckpointError(f"init_from: {source} has no checkpoint; train that run first")
    return restored[1]


class _Unusable(Exception):
    """A checkpoint that cannot be read or does not match its checksum; the message says which."""
