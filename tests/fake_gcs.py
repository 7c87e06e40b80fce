"""A gs:// bucket kept in a local directory, for tests: `python tests/fake_gcs.py ROOT ARGS...` runs
`python -m cifar_jax.main ARGS...` with every gs://BUCKET/PATH read and written as ROOT/BUCKET/PATH.

It stands in for three layers: etils.epath's gs:// backend (TensorFlow's GCS file system in a real
run), Orbax's TensorStore kvstore (the gcs driver becomes the file driver), and Orbax's bucket
query for hierarchical namespaces (google-cloud-storage). Like an object store, it refuses
appends and writes an object without a directory made first. TensorBoard's event files go
through TensorFlow's own file system, so they are mapped too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from etils.epath import backend as epath_backend

PREFIX = "gs://"


class LocalBucket(epath_backend._OsPathBackend):  # pylint: disable=protected-access
    """epath's local backend with gs:// paths mapped under `root`; appends are refused."""

    def __init__(self, root: str):
        self.root = root

    def local(self, path: Any) -> str:
        path = os.fspath(path)
        return os.path.join(self.root, path[len(PREFIX):]) if path.startswith(PREFIX) else path

    def uri(self, local: Any) -> str:
        return PREFIX + os.path.relpath(os.fspath(local), self.root)

    def open(self, path, mode):
        if "a" in mode or "+" in mode:
            raise OSError(f"{path}: an object cannot be appended to or updated in place")
        if "w" in mode:  # a bucket has no directories to create first
            os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
        return super().open(self.local(path), mode)

    def glob(self, path):
        return [self.uri(p) for p in super().glob(self.local(path))]

    def walk(self, top, **kwargs):
        for root, dirs, files in super().walk(self.local(top), **kwargs):
            yield self.uri(root), dirs, files


def _map_one(name: str):
    def mapped(self, path, *args, **kwargs):
        return getattr(epath_backend._OsPathBackend, name)(self, self.local(path), *args, **kwargs)
    return mapped


def _map_two(name: str):
    def mapped(self, path, dst, *args, **kwargs):
        return getattr(epath_backend._OsPathBackend, name)(self, self.local(path), self.local(dst), *args, **kwargs)
    return mapped


for _name in ("exists", "isdir", "listdir", "makedirs", "mkdir", "rmtree", "remove", "stat"):
    setattr(LocalBucket, _name, _map_one(_name))
for _name in ("rename", "replace", "copy"):
    setattr(LocalBucket, _name, _map_two(_name))


def install(root: str, setattr: Callable[[Any, str, Any], None] = setattr) -> None:  # noqa: A002
    """Makes gs:// paths of this process live under `root` (`setattr`: pytest's monkeypatch.setattr
    to undo it after a test)."""
    from clu import metric_writers
    from etils.epath import gpath
    from orbax.checkpoint._src.path import gcs_utils

    from cifar_jax.job import storage

    bucket = LocalBucket(root)
    setattr(gpath, "_is_tf_installed", lambda: False)  # else epath hands gs:// to TensorFlow's file system
    setattr(gpath, "_PREFIX_TO_BACKEND", {**gpath._PREFIX_TO_BACKEND, "gs": bucket})  # pylint: disable=protected-access
    setattr(gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": bucket.local(path)})
    setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    setattr(storage, "GCS_PACKAGES", ())  # the bucket query above needs no google-cloud-storage
    summary_writer = metric_writers.SummaryWriter
    setattr(metric_writers, "SummaryWriter", lambda logdir, *a, **k: summary_writer(bucket.local(logdir), *a, **k))


if __name__ == "__main__":
    install(sys.argv[1])
    from cifar_jax.cli.main import run

    sys.argv = [sys.argv[0], *sys.argv[2:]]
    run()
