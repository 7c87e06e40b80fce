"""The files of a workdir: its config, and refusing to mix runs of different configs.

A workdir belongs to one config. Re-running the same config resumes it; a different config is
refused (naming the differing fields) before anything is written, unless the user sets
`checkpoint.overwrite=True`, which moves the old run aside instead of deleting it.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections

from cifar_jax.errors import CheckpointError, WorkdirInUse
from cifar_jax.job import lease, storage
from cifar_jax.job.storage import write_text_atomic  # the writers of workdir files call it from here

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"  # image shape, class names, train size: what rebuilding the program needs
# Fields that may change between a run and its resumption: how long, how often, where the data
# lives, and how to execute or evaluate. Everything else defines the runs themselves.
# (log_every_epochs: a removed field that workdirs of earlier versions still hold.)
RESUMABLE_FIELDS = ("num_epochs", "progress_every_s", "log_step_metrics", "log_every_epochs", "checkpoint_every_epochs",
                    "tensorboard", "eval_batch_size", "dev_run", "data.dir", "data.source", "data.tfds_data_dir",
                    "eval.", "execution.", "checkpoint.keep", "checkpoint.overwrite", "checkpoint.every_minutes")
# How this process was launched, not what it trains: stored at these defaults, so they are never
# inherited from config.json (a laptop evaluating a pod's run must not wait for the pod's
# coordinator) and never block a resume on another launch (one process resuming two's run).
PER_LAUNCH_DEFAULTS = {"execution.distributed": False, "execution.coordinator_address": "",
                       "execution.num_processes": 0, "execution.process_id": -1,
                       "sweep.worker_index": -1, "sweep.num_workers": 0}
# Fields added by a later version whose default is not "off": the value that reproduces what
# earlier versions did, so a workdir they wrote still resumes under it.
ADDED_DEFAULTS = {"model.dropout_kind": "element"}
# Held (flock) by the process writing into the workdir; stays when a run is moved aside.
LOCK_FILE = ".lock"
# Files a run writes at the top of its workdir (moved aside together on overwrite).
RUN_FILES = (CONFIG_FILE, DATA_FILE, "checkpoints", "metrics.jsonl", "steps.jsonl", "results.json", "tensorboard",
             "eval")


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The JSON form of a config (tuples become lists) as stored in the workdir: the per-launch
    fields it has are at their defaults."""
    return without_launch(json.loads(config.to_json_best_effort()))


def without_launch(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of `tree` (a config's JSON form) with the PER_LAUNCH_DEFAULTS fields it holds reset."""
    tree = {key: dict(value) if isinstance(value, dict) else value for key, value in tree.items()}
    for name, default in PER_LAUNCH_DEFAULTS.items():
        section, _, field = name.partition(".")
        if isinstance(tree.get(section), dict) and field in tree[section]:
            tree[section][field] = default
    return tree


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_fields(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ and matter for resuming. A field the stored config
    lacks (added by a later version, like data.shared_order) matches while it is off (False, 0,
    empty) or at its ADDED_DEFAULTS value: what the older version did."""
    old, new = _flat(without_launch(stored)), _flat(without_launch(current))

    def differs(name: str) -> bool:
        if name not in old:
            return bool(new[name]) and new[name] != ADDED_DEFAULTS.get(name)
        return old[name] != new.get(name)
    return sorted(name for name in set(old) | set(new) if differs(name) and not name.startswith(RESUMABLE_FIELDS))


def describe_differences(stored: dict[str, Any], current: dict[str, Any], differing: list[str],
                         shown: int = 4) -> str:
    """'field (old -> new), ...' for the first `shown` differing fields, then how many more."""
    old, new = _flat(stored), _flat(current)
    text = ", ".join(f"{name} ({old.get(name)!r} -> {new.get(name)!r})" for name in differing[:shown])
    return text + (f" and {len(differing) - shown} more" if len(differing) > shown else "")


def load_json(workdir: str, name: str) -> Any:
    """A JSON file of the workdir, or None when it does not exist."""
    path = os.path.join(workdir, name)
    try:
        text = storage.read_text(path)
        return None if text is None else json.loads(text)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {error}); restore it from a copy, "
                              "or pass another --workdir") from None


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its config.json)."""
    stored = load_json(workdir, CONFIG_FILE)
    if stored is None:
        raise CheckpointError(f"{workdir} holds no trained run (no {CONFIG_FILE}); "
                              "train first with --mode=train or point --workdir at a run")
    return ml_collections.ConfigDict(without_launch(stored))  # written by an earlier version: launch fields kept


def claim(workdir: str, config: ml_collections.ConfigDict, data_meta: dict[str, Any]) -> None:
    """Makes `workdir` this config's: new, same config (resume), or an explicit overwrite."""
    make_room(workdir, config)
    write_run_files(workdir, config, data_meta)


def make_room(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses (writing nothing) a workdir that holds a run of another config; with
    `checkpoint.overwrite` moves that run aside. A resume of the same config changes nothing."""
    stored = load_json(workdir, CONFIG_FILE)
    current = config_to_dict(config)
    if stored is not None:
        differing = differing_fields(stored, current)
        if differing and not config.checkpoint.overwrite:
            raise CheckpointError(
                f"{workdir} holds a run of another config: {describe_differences(stored, current, differing)}; "
                "use another --workdir, the "
                "original config, or --config.checkpoint.overwrite=True to move the old run aside")
        if differing:
            _move_aside(workdir)


def write_run_files(workdir: str, config: ml_collections.ConfigDict, data_meta: dict[str, Any]) -> None:
    """config.json and data.json, written only when they change (a resume leaves them as they are)."""
    storage.makedirs(workdir)
    current = config_to_dict(config)
    for name, payload in ((CONFIG_FILE, current), (DATA_FILE, data_meta)):
        if load_json(workdir, name) != payload:  # a resume leaves the run's files untouched
            write_json_atomic(os.path.join(workdir, name), payload)


def _move_aside(workdir: str) -> str:
    """Moves the previous run's files into a new `replaced-<time>-<unique>/`: an overwrite never
    deletes results, and two overwrites within a second never collide. (On an object store each
    moved object is copied, then deleted.)"""
    target = os.path.join(workdir, time.strftime("replaced-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8])
    storage.path(target).mkdir(mode=0o755)
    for name in RUN_FILES:
        if storage.exists(os.path.join(workdir, name)):
            storage.path(os.path.join(workdir, name)).rename(os.path.join(target, name))
    return target


def write_json_atomic(path: str, payload: Any) -> None:
    """A JSON file written whole (`storage.write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=1))


@contextlib.contextmanager
def workdir_lock(workdir: str, *, create: bool = True) -> Iterator[None]:
    """Makes this process the one writer of `workdir` while the block runs.

    Two processes writing one workdir (a second terminal, a re-sent job) would interleave
    checkpoints and metrics, so a second one is refused at once, naming the holder. The lock is
    an flock on WORKDIR/.lock, which exists only while held: the OS releases the flock when its
    holder dies, so a lock file left by a killed process is taken over with a warning. Where the
    file system has no flock, a lease with holder and age stands in for it (`lease`). Of a
    multi-process job only the primary process takes it (`execution.on_primary`). With
    `create=False` a missing workdir is left missing (evaluation reports that itself). A workdir
    this call created and nothing wrote into (a start that failed) is removed again, so a
    mistyped --workdir leaves no stray directory.
    """
    if not create and not storage.isdir(workdir):
        yield
        return
    created = not storage.exists(workdir)
    release = _take(workdir)
    try:
        yield
    finally:
        release()
        if created and storage.isdir(workdir) and not storage.listdir(workdir):
            storage.path(workdir).rmtree(missing_ok=True)


def _take(workdir: str) -> Callable[[], None]:
    """Takes the flock on WORKDIR/.lock, or where the file system has no flock (an object store
    among them) the lease (`lease.take`); returns the function that releases it."""
    if storage.is_remote(workdir):
        storage.makedirs(workdir)
        return lease.take(workdir)
    try:
        fd, holder = _lock(workdir)
    except _NoFlock:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(workdir, LOCK_FILE))  # the empty file `_lock` created; a lease is used instead
        return lease.take(workdir)
    if holder:
        logging.warning("%s: taking over the lock of process %s on %s (started %s), which ended without "
                        "releasing it", workdir, holder.get("pid"), holder.get("host"), holder.get("start"))
    _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(), "start": time.strftime("%Y-%m-%d %H:%M:%S")})

    def release() -> None:
        # Removed while still locked: a process that opened it meanwhile finds it gone (see `_lock`).
        with contextlib.suppress(FileNotFoundError):  # the user deleted the workdir under the job
            os.unlink(os.path.join(workdir, LOCK_FILE))
        os.close(fd)  # releases the flock
    return release


class _NoFlock(Exception):
    """The workdir's file system does not support flock."""


def _lock(workdir: str) -> tuple[int, dict[str, Any]]:
    """(descriptor holding the flock on WORKDIR/.lock, the previous holder recorded in it).

    A file removed by its releasing holder between our open and our flock is an orphan: locking
    it would exclude nobody, so the check that the path still names it retries with the new file.
    """
    path = os.path.join(workdir, LOCK_FILE)
    while True:
        fd = _open_lock(workdir)
        try:
            holder = _read_holder(fd)
            _acquire(fd, workdir, holder)
            if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, holder
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _open_lock(workdir: str) -> int:
    try:
        os.makedirs(workdir, exist_ok=True)
        return os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except (FileExistsError, NotADirectoryError):
        raise CheckpointError(f"--workdir {workdir} is (or lies below) a file, not a directory; pass a directory") from None
    except OSError as error:
        raise CheckpointError(f"cannot write into --workdir {workdir} ({error.strerror}); fix its permissions "
                              "or pass another --workdir") from None


def _acquire(fd: int, workdir: str, holder: dict[str, Any]) -> None:
    """The flock; _NoFlock on file systems without it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        raise _NoFlock() from None
    raise WorkdirInUse(
        f"{workdir} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} (since "
        f"{holder.get('start', '?')}); wait for it to finish, stop it, or pass another --workdir")


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder recorded in the lock file; {} when it is empty (free) or unreadable."""
    try:
        text = os.pread(fd, 4096, 0).decode()
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
