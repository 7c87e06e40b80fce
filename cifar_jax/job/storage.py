"""Workdir files through one path type (`etils.epath`), on a local disk or in a gs:// bucket.

An object store has no appends, no flock and no atomic rename (a GCS rename is a server-side
copy, then a delete), but an object upload is atomic: readers see the old object or the new one,
never half of one. So there a whole-object write stands in for write-then-rename, and an append
rewrites the object (metrics.jsonl grows by one epoch's lines: a few KB to MB rewritten once an
epoch). Paths stay strings: `os.path.join` is right for URIs, while `abspath` and `normpath`
are not and are only applied to local paths.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import posixpath
import re
import uuid
from collections.abc import Iterable

from etils import epath

from cifar_jax.errors import UsageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Orbax writes checkpoints natively (TensorStore's gcs driver) to gs:// only; other schemes would
# need it to treat the URI as a local path.
SUPPORTED_SCHEMES = ("gs",)
# What Orbax imports for a gs:// checkpoint directory (it asks the bucket about hierarchical namespaces).
GCS_PACKAGES = ("google.cloud.storage",)


def scheme(path: str) -> str | None:
    """'gs' of 'gs://bucket/x'; None for a local path (also one with a colon, like runs/gs:x)."""
    match = _SCHEME.match(str(path))
    return match.group(1) if match else None


def is_remote(path: str) -> bool:
    return scheme(path) is not None


def check_workdir(workdir: str) -> None:
    """Refuses a URI Orbax cannot write a checkpoint to, and a gs:// workdir without the package
    Orbax lists its steps with; before anything touches the workdir."""
    name = scheme(workdir)
    if name is None:
        return
    if name not in SUPPORTED_SCHEMES:
        raise UsageError(f"--workdir {workdir}: {name}:// workdirs are not supported (Orbax writes checkpoints "
                         "natively to gs:// only); use gs:// or a directory every host mounts")
    missing = [name for name in GCS_PACKAGES if _missing(name)]
    if missing:
        raise UsageError(f"--workdir {workdir}: a gs:// workdir needs google-cloud-storage (Orbax lists its "
                         "checkpoints with it); pip install google-cloud-storage")


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # its parent package (google.cloud) is missing
        return True


def path(name: str) -> epath.Path:
    """The epath of a workdir file; a local one absolute (Orbax refuses relative paths)."""
    return epath.Path(name if is_remote(name) else os.path.abspath(name))


def resolve(base: str, relative: str) -> str:
    """`relative` (a path relative to the directory `base`, or absolute, or a URI) made whole."""
    if is_remote(relative) or os.path.isabs(relative):
        return relative
    if not is_remote(base):
        return os.path.normpath(os.path.join(base, relative))
    prefix = f"{scheme(base)}://"
    return prefix + posixpath.normpath(posixpath.join(base[len(prefix):], relative))


def read_text(name: str) -> str | None:
    """The file's text; None when it does not exist."""
    try:
        return path(name).read_text()
    except FileNotFoundError:
        return None


def write_text_atomic(name: str, text: str) -> None:
    """Writes so that a killed process never leaves half a file and two writers (sweep workers)
    never mix theirs: locally through a temporary file of its own and a rename; on an object
    store by one upload, atomic by itself (a rename there would copy the object once more)."""
    target = path(name)
    if is_remote(name):
        target.write_text(text)
        return
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}"
    try:
        tmp.write_text(text)
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def append_lines(name: str, lines: Iterable[str]) -> None:
    """Appends lines (each without its newline); on an object store by rewriting the object."""
    text = "".join(line + "\n" for line in lines)
    if not is_remote(name):
        with path(name).open("a") as f:
            f.write(text)
        return
    path(name).write_text((read_text(name) or "") + text)


def makedirs(name: str) -> None:
    path(name).mkdir(parents=True, exist_ok=True)


def exists(name: str) -> bool:
    return path(name).exists()


def isdir(name: str) -> bool:
    return path(name).is_dir()


def listdir(name: str) -> list[str]:
    """The names in a directory; [] when it does not exist (TensorFlow's GCS listing raises its own
    NotFoundError there)."""
    directory = path(name)
    return sorted(child.name for child in directory.iterdir()) if directory.is_dir() else []
