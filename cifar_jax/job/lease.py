"""The one-writer rule of a workdir on a file system without `flock` (some NFS and FUSE mounts).

There the OS cannot release a dead holder's lock, so the holder takes a *lease*: WORKDIR/.lease,
created exclusively (O_EXCL), records the holder (process, host, start) and when it last renewed
the lease; a thread renews it every RENEW_S seconds while the holder runs. Another process is
refused while the lease is fresh, and takes it over (with a warning) once nobody renewed it for
STALE_S seconds, or at once when the holder is a process of this host that no longer exists. An
empty lease (its holder died between creating and writing it) ages from the file's mtime.

The ages compare the holder's clock with the reader's: hosts whose clocks differ by minutes see
a lease as fresher or staler by as much. The take-over of a stale lease is a rename followed by
an exclusive create; two processes taking over the same stale lease at the same instant can,
rarely, both succeed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from cifar_jax.errors import WorkdirInUse

LEASE_FILE = ".lease"
RENEW_S = 30.0  # how often the holder renews its lease
STALE_S = 300.0  # a lease nobody renewed for this long belongs to a holder that is gone


def take(workdir: str, *, renew_s: float = RENEW_S, stale_s: float = STALE_S) -> Callable[[], None]:
    """Takes WORKDIR's lease (refusing with WorkdirInUse while another holder's is fresh) and
    renews it in a thread; returns the function that releases it."""
    path = os.path.join(workdir, LEASE_FILE)
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            _take_over_if_stale(workdir, path, stale_s)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "start": time.strftime("%Y-%m-%d %H:%M:%S")}
    _renew(fd, holder)
    stop = threading.Event()
    thread = threading.Thread(target=_keep_renewing, args=(fd, holder, stop, renew_s), name="lease", daemon=True)
    thread.start()

    def release() -> None:
        stop.set()
        thread.join()
        os.close(fd)
        os.unlink(path)
    return release


def _take_over_if_stale(workdir: str, path: str, stale_s: float) -> None:
    """Moves a stale lease out of the way (with a warning); WorkdirInUse for a fresh one."""
    holder, age = read(path)
    if age is None:
        return  # released meanwhile: try again
    if age < stale_s and not _gone_here(holder):
        raise WorkdirInUse(
            f"{workdir} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} (its lease was "
            f"renewed {age:.0f} s ago; this file system has no flock); wait for it, stop it, or if it is gone "
            f"rerun in {stale_s - age:.0f} s or delete {path}")
    logging.warning("%s: taking over the lease of process %s on %s (not renewed for %.0f s)", workdir,
                    holder.get("pid"), holder.get("host"), age)
    stale = f"{path}.stale-{socket.gethostname()}-{os.getpid()}"
    try:
        os.replace(path, stale)
        os.unlink(stale)
    except FileNotFoundError:
        pass  # another process took it over first: its fresh lease refuses us on the next try


def read(path: str) -> tuple[dict[str, Any], float | None]:
    """(holder, seconds since its last renewal) of a lease file; age None when there is none."""
    try:
        with open(path) as f:
            text = f.read()
        modified = os.path.getmtime(path)
    except FileNotFoundError:
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


def _renew(fd: int, holder: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({**holder, "renewed": time.time()}).encode(), 0)


def _keep_renewing(fd: int, holder: dict[str, Any], stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            _renew(fd, holder)
        except OSError as error:  # a transient server error: the next renewal tries again
            logging.warning("cannot renew the workdir lease (%s)", error)
