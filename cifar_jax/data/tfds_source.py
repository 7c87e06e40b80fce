"""Data sets through tensorflow-datasets, for machines with a network or a prepared TFDS copy:
an offline machine fails in seconds (a probe of the download host), a failed download leaves
nothing behind, and processes sharing a data dir (one per GPU, one per core) download it once."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cifar_jax.data.catalog import Dataset, check_name, make_dataset
from cifar_jax.errors import DataError, brief

# Where TFDS downloads each data set from: probed before a download so offline fails fast.
_TFDS_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
}
_PROBE_TIMEOUT_S = 5.0
# Turned off by the command line's quiet start (cli.quiet): TFDS's bars are redrawn for minutes.
tfds_progress_bars = True


def load_tfds(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    """Loads train and test through tensorflow-datasets, honouring the user's own TFDS set-up
    (`data_dir=None` means TFDS_DATA_DIR or ~/tensorflow_datasets); every failure is a DataError.

    A prepared copy is read without the network. Otherwise the download host is probed first, so
    an offline machine fails in seconds instead of minutes of TFDS retries, and whatever a failed
    download created under the data dir is removed, so a later attempt starts clean.
    """
    check_name(name)
    where = f"TFDS {name} (data_dir={data_dir or 'TFDS default'})"
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        _hide_gpus_from_tensorflow(tf)
        if not tfds_progress_bars:
            tfds.disable_progress_bar()
        try:
            splits = _tfds_splits(tfds, name, data_dir, download=False)
        except Exception:  # not prepared (or unreadable): download, if allowed
            if not download:
                raise
            _check_reachable(name, _TFDS_URLS[name])
            root = Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
            with _one_process_at_a_time(root):
                try:  # another process may have prepared it while this one waited
                    splits = _tfds_splits(tfds, name, data_dir, download=False)
                except Exception:
                    with _removing_new_paths(root):
                        splits = _tfds_splits(tfds, name, data_dir, download=True)
    except DataError:
        raise
    except Exception as error:  # download, preparation and reading fail in many library-specific ways
        raise DataError(f"{where} failed: {brief(error)}") from error
    return make_dataset(name, splits[0], splits[1], where, (f"{where} train", f"{where} test"))


def _tfds_splits(tfds: Any, name: str, data_dir: str | None, download: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    train, test = tfds.load(name, split=["train", "test"], data_dir=data_dir, download=download)
    return [_tfds_arrays(ds) for ds in (train, test)]


def _check_reachable(name: str, url: str, timeout_s: float = _PROBE_TIMEOUT_S) -> None:
    """Opens one TCP connection to the download host, in a thread so that a hanging DNS lookup
    is bounded too; raises a one-line DataError with the offline fixes when it fails."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if outcome and outcome[0] is None:
        return
    reason = brief(outcome[0]) if outcome else f"no answer in {timeout_s:.0f} s"
    raise DataError(
        f"TFDS has no prepared {name} and cannot download it: {parts.hostname} is unreachable "
        f"({reason[:60]}); offline, pass --config.data.dir=DIR with the files, or "
        "--config.data.tfds_data_dir=DIR with a prepared copy"
    )


@contextlib.contextmanager
def _one_process_at_a_time(root: Path) -> Iterator[None]:
    """An exclusive `flock` on the data dir while a download runs: processes that share it (one per
    GPU of a host, one per core) would otherwise download together, and one's clean-up of a failed
    download would delete what another just finished. A dir this call created is removed again
    when the download fails and leaves it empty."""
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(root, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: unguarded, as before
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()  # only when empty
        raise
    finally:
        os.close(descriptor)  # releases the lock


@contextlib.contextmanager
def _removing_new_paths(root: Path) -> Iterator[None]:
    """On failure, deletes what appeared under `root` (two levels deep) during the block: TFDS
    leaves incomplete dataset and download directories behind."""
    before = _tree_entries(root)
    try:
        yield
    except BaseException:
        for path in sorted(_tree_entries(root) - before, key=lambda p: len(p.parts)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
        raise


def _tree_entries(root: Path, depth: int = 2) -> set[Path]:
    """`root` (when it exists) and the paths below it up to `depth` levels."""
    if not root.exists():
        return set()
    entries, frontier = {root}, [root]
    for _ in range(depth):
        frontier = [child for parent in frontier if parent.is_dir() and not parent.is_symlink()
                    for child in parent.iterdir()]
        entries.update(frontier)
    return entries


def _hide_gpus_from_tensorflow(tf: Any) -> None:
    """tf.data must not claim accelerator memory: JAX owns it."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow was initialised before us; its device choice can no longer change


def _tfds_arrays(ds: Any, chunk: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Batched chunks through `tfds.as_numpy` (works under mock_data, unlike batch_size=-1)."""
    import tensorflow_datasets as tfds

    images, labels = [], []
    for batch in tfds.as_numpy(ds.batch(chunk)):
        images.append(batch["image"])
        labels.append(batch["label"])
    return np.concatenate(images), np.concatenate(labels)
