"""The one-writer rule of a workdir where `flock` does not exist: some NFS and FUSE mounts, and
object stores (gs://).

There the OS cannot release a dead holder's lock, so the holder takes a *lease*: WORKDIR/.lease
records the holder (process, host, start, a token) and when it last renewed the lease; a thread
renews it every RENEW_S seconds while the holder runs. Another process is refused while the
lease is fresh, and takes it over (with a warning) once nobody renewed it for STALE_S seconds, or
at once when the holder is a process of this host that no longer exists. An empty lease (its
holder died between creating and writing it) ages from the file's mtime.

Creating the lease is exclusive on a file system (O_EXCL). An object store has no exclusive
create through epath, so there the taker writes the lease, waits SETTLE_S and reads it back: of
two takers that both saw no lease, the one whose token was overwritten sees the other's fresh
lease and is refused. Two takers whose writes are more than SETTLE_S apart after both found no
lease (a store that slow) can both succeed; so can two taking over one stale lease at the same
instant. The ages compare the holder's clock with the reader's: hosts whose clocks differ by
minutes see a lease as fresher or staler by as much.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from cifar_jax.errors import WorkdirInUse
from cifar_jax.job import storage

LEASE_FILE = ".lease"
RENEW_S = 30.0  # how often the holder renews its lease
STALE_S = 300.0  # a lease nobody renewed for this long belongs to a holder that is gone
SETTLE_S = 2.0  # on an object store: how long a taker waits before reading its lease back


def take(workdir: str, *, renew_s: float = RENEW_S, stale_s: float = STALE_S,
         settle_s: float | None = None) -> Callable[[], None]:
    """Takes WORKDIR's lease (refusing with WorkdirInUse while another holder's is fresh) and
    renews it in a thread; returns the function that releases it. `settle_s`: SETTLE_S."""
    settle_s = SETTLE_S if settle_s is None else settle_s
    path = os.path.join(workdir, LEASE_FILE)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "start": time.strftime("%Y-%m-%d %H:%M:%S"),
              "token": uuid.uuid4().hex}
    while not _create(path, holder, settle_s):
        _take_over_if_stale(workdir, path, stale_s)
    stop = threading.Event()
    thread = threading.Thread(target=_keep_renewing, args=(path, holder, stop, renew_s), name="lease", daemon=True)
    thread.start()

    def release() -> None:
        stop.set()
        thread.join()
        if read(path)[0].get("token") in (holder["token"], None):  # not a lease another took over
            storage.path(path).unlink(missing_ok=True)
    return release


def _create(path: str, holder: dict[str, Any], settle_s: float) -> bool:
    """Whether this process created the lease (False: there is one, maybe created meanwhile)."""
    if not storage.is_remote(path):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        _renew(path, holder)
        return True
    if storage.exists(path):
        return False
    _renew(path, holder)
    time.sleep(settle_s)
    return read(path)[0].get("token") == holder["token"]


def _take_over_if_stale(workdir: str, path: str, stale_s: float) -> None:
    """Moves a stale lease out of the way (with a warning); WorkdirInUse for a fresh one."""
    holder, age = read(path)
    if age is None:
        return  # released meanwhile: try again
    if age < stale_s and not _gone_here(holder):
        raise WorkdirInUse(
            f"{workdir} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} (its lease was "
            f"renewed {age:.0f} s ago; no flock here); wait for it, stop it, or if it is gone "
            f"rerun in {stale_s - age:.0f} s or delete its {os.path.basename(path)} file")
    logging.warning("%s: taking over the lease of process %s on %s (not renewed for %.0f s)", workdir,
                    holder.get("pid"), holder.get("host"), age)
    if storage.is_remote(path):
        storage.path(path).unlink(missing_ok=True)  # a rename would copy: the takers' read-back decides
        return
    stale = f"{path}.stale-{socket.gethostname()}-{os.getpid()}"
    try:
        os.replace(path, stale)
        os.unlink(stale)
    except FileNotFoundError:
        pass  # another process took it over first: its fresh lease refuses us on the next try


def read(path: str) -> tuple[dict[str, Any], float | None]:
    """(holder, seconds since its last renewal) of a lease file; age None when there is none."""
    text = storage.read_text(path)
    try:
        modified = storage.path(path).stat().mtime if text is not None else None
    except FileNotFoundError:
        modified = None
    if text is None or modified is None:
        return {}, None
    try:
        holder = json.loads(text) if text.strip() else {}
    except ValueError:
        holder = {}
    holder = holder if isinstance(holder, dict) else {}
    renewed = holder.get("renewed")
    return holder, time.time() - (renewed if isinstance(renewed, (int, float)) else modified)


def _gone_here(holder: dict[str, Any]) -> bool:
    """Whether the holder is a process of this host that no longer exists."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def _renew(path: str, holder: dict[str, Any]) -> None:
    """Replaces the lease whole, so a reader never sees it half written."""
    storage.write_text_atomic(path, json.dumps({**holder, "renewed": time.time()}))


def _keep_renewing(path: str, holder: dict[str, Any], stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            _renew(path, holder)
        except OSError as error:  # a transient server error: the next renewal tries again
            logging.warning("cannot renew the workdir lease (%s)", error)
