"""Data sets as whole uint8 NHWC arrays, validation splits, k folds and on-device normalization.

The arrays are small enough (CIFAR-10 180 MB, Fashion-MNIST 55 MB) to be moved to the device once
and stay there, so this module only reads files into numpy and never builds a per-step pipeline.
Sources: local files (npz, the official CIFAR-10 archives, (Fashion-)MNIST IDX files) for
offline machines, and tensorflow-datasets for everyone else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import math
import pickle
import re
import shutil
import socket
import struct
import tarfile
import threading
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cifar_jax.errors import ConfigError, DataError

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
}
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar10": (32, 32, 3),
    "fashion_mnist": (28, 28, 1),
    "mnist": (28, 28, 1),
}
SOURCES = ("auto", "local", "tfds")

# Where people usually keep each data set below a data root (torchvision's layout included).
_SUBDIRS: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar10", "cifar-10"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
    "mnist": ("mnist", "MNIST/raw"),
}
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_RECORD = 1 + 32 * 32 * 3  # one label byte, then the image as CHW bytes
_IDX_MAGIC = {1: 2049, 3: 2051}  # uint8 labels (1-d) and images (3-d)
_ERROR_DETAIL_CHARS = 240
_MESSAGE_CHARS = 293  # a whole error message: "error: " + this fits the CLI's 300-character line
# Where TFDS downloads each data set from: probed before a download so offline fails fast.
_TFDS_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
}
_PROBE_TIMEOUT_S = 5.0
# Turned off by the command line's quiet start (cli.quiet): TFDS's bars are redrawn for minutes.
tfds_progress_bars = True


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A whole data set in host memory: uint8 NHWC images, int32 labels.

    `test_images`/`test_labels` are None when the source has no test split (like the shared
    CIFAR-10 copy); callers then carve everything they evaluate on out of train.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: tuple[str, ...]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------- entry point


def load_dataset(data_config: Any) -> Dataset:
    """Loads `config.data` from its source, trims it to the configured limits and validates it.

    An explicit `data.dir` is authoritative: when it holds no data set the load fails at once
    (a mistyped path is the commonest first mistake), never falling back to a slow download.
    'auto' uses TFDS only when `data.dir` is empty.
    """
    name = check_name(data_config.name)
    source = data_config.source
    local_dir = str(data_config.dir or "")
    tfds_dir = str(data_config.tfds_data_dir or "") or None
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r} is not one of {', '.join(SOURCES)}")
    if source == "local" and not local_dir:
        raise ConfigError(
            f"data.source='local' needs --config.data.dir=DIR, a directory with the {name} files "
            "(train.npz, the official archives or IDX files; see the README)"
        )
    if source == "tfds" or not local_dir:
        dataset = load_tfds(name, tfds_dir)
    else:
        dataset = load_local(name, local_dir)
    return _apply_limits(dataset, data_config.train_limit, data_config.test_limit)


def check_name(name: str) -> str:
    """Returns `name` if it is a supported data set, else a ConfigError listing the choices."""
    if name not in IMAGE_SHAPES:
        raise ConfigError(f"data.name={name!r} is not one of {', '.join(IMAGE_SHAPES)}")
    return name


def _apply_limits(dataset: Dataset, train_limit: int, test_limit: int) -> Dataset:
    """Keeps the first N images of each split; copies so the untrimmed arrays can be freed."""
    train_limit, test_limit = int(train_limit), int(test_limit)
    for field, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit < 0:
            raise ConfigError(f"data.{field}={limit} must be >= 0 (0 = all images)")
    changes = {}
    if train_limit and train_limit < len(dataset.train_labels):
        changes["train_images"] = dataset.train_images[:train_limit].copy()
        changes["train_labels"] = dataset.train_labels[:train_limit].copy()
    if test_limit and dataset.test_labels is not None and test_limit < len(dataset.test_labels):
        changes["test_images"] = dataset.test_images[:test_limit].copy()
        changes["test_labels"] = dataset.test_labels[:test_limit].copy()
    return dataclasses.replace(dataset, **changes) if changes else dataset


# --------------------------------------------------------------------------- validation


def _validated(
    name: str, images: Any, labels: Any, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Checks one split against the data set's shape and classes; returns (uint8 NHWC, int32)."""
    images, labels = np.asarray(images), np.asarray(labels)
    expected = IMAGE_SHAPES[name]
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images are {images.dtype}, expected uint8 pixels 0..255")
    if expected[2] == 1 and images.ndim == 3:
        images = images[..., None]  # grayscale N,H,W -> N,H,W,1
    if images.ndim != 4 or images.shape[1:] != expected:
        raise DataError(
            f"{where}: images have shape {images.shape}, {name} needs (N, "
            f"{', '.join(map(str, expected))}); is --config.data.name right?"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    num_classes = len(CLASS_NAMES[name])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels span {labels.min()}..{labels.max()}, {name} has classes 0..{num_classes - 1}"
        )
    return images, labels.astype(np.int32)


def _make_dataset(
    name: str,
    train: tuple[Any, Any],
    test: tuple[Any, Any] | None,
    source: str,
    where: tuple[str, str],
) -> Dataset:
    train_images, train_labels = _validated(name, *train, where[0])
    test_images = test_labels = None
    if test is not None:
        test_images, test_labels = _validated(name, *test, where[1])
    return Dataset(name, train_images, train_labels, test_images, test_labels, CLASS_NAMES[name], source)


# --------------------------------------------------------------------------- local files

Reader = Callable[[str, Path], Dataset]


def load_local(name: str, root: str | Path) -> Dataset:
    """Reads the first supported file layout found in `root` or its conventional subdirectories."""
    found = find_local(check_name(name), root)
    if found is None:
        raise DataError(_not_found(name, Path(root).expanduser()))
    reader, path = found
    return reader(name, path)


def find_local(name: str, root: str | Path) -> tuple[Reader, Path] | None:
    """Returns (reader, the file that selects it) for the first layout present in `root` or its
    conventional subdirectories, preferring extracted files to archives."""
    for directory in _candidate_dirs(name, Path(root).expanduser()):
        for reader, marker in _layouts(name):
            if (directory / marker).is_file():
                return reader, directory / marker
    return None


def _candidate_dirs(name: str, root: Path) -> list[Path]:
    return [root] + [root / sub for sub in _SUBDIRS[name]]


def _layouts(name: str) -> list[tuple[Reader, str]]:
    """(reader, file whose presence selects it), in order of preference.

    Each reader gets that file's path: archives are read from it, the others from its directory.
    """
    layouts: list[tuple[Reader, str]] = [(_read_npz_dir, "train.npz"), (_read_npz_dir, "test.npz")]
    if name == "cifar10":
        layouts += [
            (_read_cifar_binary_dir, "data_batch_1.bin"),
            (_read_cifar_binary_dir, "cifar-10-batches-bin/data_batch_1.bin"),
            (_read_cifar_python_dir, "data_batch_1"),
            (_read_cifar_python_dir, "cifar-10-batches-py/data_batch_1"),
            (_read_cifar_binary_tar, "cifar-10-binary.tar.gz"),
            (_read_cifar_python_tar, "cifar-10-python.tar.gz"),
        ]
    else:
        layouts += [
            (_read_idx_dir, "train-images-idx3-ubyte.gz"),
            (_read_idx_dir, "train-images-idx3-ubyte"),
        ]
    return layouts


def _not_found(name: str, root: Path) -> str:
    """One short line: the directory (in full: a typo may be anywhere in it), the file names
    looked for, as many as fit, and the fix."""
    if not root.is_dir():
        return (f"data.dir={root} is not a directory; fix --config.data.dir, or set it to '' "
                f"to download {name} with TFDS")
    files = ", ".join(dict.fromkeys(marker.rsplit("/", 1)[-1] for _, marker in _layouts(name)))
    subdirs = ", ".join(f"{sub}/" for sub in _SUBDIRS[name])
    variants = (f" (looked for {files} in it and in {subdirs})", f" (looked for {files})", "")
    messages = [f"data.dir={root} holds no {name} data set{looked}; add the files or fix --config.data.dir"
                for looked in variants]
    return next((m for m in messages if len(m) <= _MESSAGE_CHARS), messages[-1])


def _read_npz_dir(name: str, marker: Path) -> Dataset:
    """train.npz and/or test.npz with 'image' and 'label'; a missing train split reads as empty."""
    directory = marker.parent
    splits = {}
    for split in ("train", "test"):
        path = directory / f"{split}.npz"
        if path.exists():
            splits[split] = _read_npz(path)
    empty = (np.zeros((0, *IMAGE_SHAPES[name]), np.uint8), np.zeros((0,), np.int32))
    return _make_dataset(
        name,
        splits.get("train", empty),
        splits.get("test"),
        f"npz files in {directory}",
        (str(directory / "train.npz"), str(directory / "test.npz")),
    )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest loading it unsafely
        raise DataError(f"{path}: not an npz (zip) file, truncated or of another format; write it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:  # allow_pickle=False: no code from files
            keys = set(npz.files)
            if not {"image", "label"} <= keys:
                raise DataError(f"{path}: has arrays {sorted(keys)}, needs 'image' (uint8 NHWC) and 'label'")
            return npz["image"], npz["label"]
    except DataError:
        raise
    except Exception as error:  # zip/npy parsing of an arbitrary file fails in many ways
        raise DataError(f"{path}: not a readable npz ({_brief(error)}); write it with np.savez") from error


def _cifar_binary_split(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes CIFAR-10 binary records: 1 label byte + 3072 image bytes in CHW order."""
    if not raw or len(raw) % _CIFAR_RECORD:
        raise DataError(
            f"{where}: {len(raw)} bytes is not a whole number of {_CIFAR_RECORD}-byte CIFAR-10 "
            "records (truncated?); download cifar-10-binary.tar.gz again"
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].astype(np.int32)


def _cifar_from_members(name: str, members: dict[str, bytes], suffix: str, where: str) -> Dataset:
    """Builds the data set from CIFAR batch files (by base name); test_batch may be absent.

    `suffix` tells the forms apart: '.bin' for binary records, '' for pickled batches.
    """
    decode = _cifar_binary_split if suffix == ".bin" else _cifar_python_split
    missing = [b + suffix for b in _CIFAR_TRAIN_BATCHES if b + suffix not in members]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}; download the archive again")
    parts = [decode(members[b + suffix], f"{where}/{b}{suffix}") for b in _CIFAR_TRAIN_BATCHES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test_name = "test_batch" + suffix
    test = decode(members[test_name], f"{where}/{test_name}") if test_name in members else None
    return _make_dataset(name, train, test, where, (f"{where} (train)", f"{where}/{test_name}"))


def _dir_members(directory: Path, suffix: str) -> dict[str, bytes]:
    names = [b + suffix for b in (*_CIFAR_TRAIN_BATCHES, "test_batch")]
    return {n: (directory / n).read_bytes() for n in names if (directory / n).is_file()}


def _tar_members(path: Path, suffix: str) -> dict[str, bytes]:
    """Reads the CIFAR batch files out of a .tar.gz in one streaming pass, without extracting."""
    wanted = {b + suffix for b in (*_CIFAR_TRAIN_BATCHES, "test_batch")}
    members = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted and member.isfile():
                    members[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        message = f"{path}: truncated or corrupt archive ({_brief(error)}); download it again"
        raise DataError(message) from error
    return members


def _read_cifar_binary_dir(name: str, marker: Path) -> Dataset:
    return _cifar_from_members(name, _dir_members(marker.parent, ".bin"), ".bin", str(marker.parent))


def _read_cifar_binary_tar(name: str, path: Path) -> Dataset:
    return _cifar_from_members(name, _tar_members(path, ".bin"), ".bin", str(path))


def _read_cifar_python_dir(name: str, marker: Path) -> Dataset:
    return _cifar_from_members(name, _dir_members(marker.parent, ""), "", str(marker.parent))


def _read_cifar_python_tar(name: str, path: Path) -> Dataset:
    return _cifar_from_members(name, _tar_members(path, ""), "", str(path))


def _cifar_python_split(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one pickled CIFAR-10 batch: {b'data': uint8 (N, 3072) CHW rows, b'labels': [int]}."""
    batch = restricted_unpickle(raw, where)
    if not isinstance(batch, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        keys = sorted(map(str, batch))
        raise DataError(f"{where}: pickled dict has keys {keys}, needs 'data' and 'labels'")
    data = batch["data"]
    if not isinstance(data, _ArrayStub):
        raise DataError(f"{where}: 'data' is {type(data).__name__}, expected a uint8 array")
    data = data.to_numpy(where)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{where}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    labels = batch["labels"]
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise DataError(f"{where}: 'labels' must be a list of ints")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(labels, np.int64)


def _read_idx_dir(name: str, marker: Path) -> Dataset:
    """(Fashion-)MNIST IDX files, gzipped or not; the t10k (test) pair is optional."""
    directory = marker.parent

    def pair(prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
        for ext in (".gz", ""):
            images = directory / f"{prefix}-images-idx3-ubyte{ext}"
            labels = directory / f"{prefix}-labels-idx1-ubyte{ext}"
            if images.exists():
                if not labels.exists():
                    raise DataError(f"{images} has no matching {labels.name} next to it")
                return _read_idx(images, ndim=3), _read_idx(labels, ndim=1)
        return None

    where = (str(directory / "train-*-ubyte*"), str(directory / "t10k-*-ubyte*"))
    return _make_dataset(name, pair("train"), pair("t10k"), f"IDX files in {directory}", where)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parses an IDX file of uint8 values: big-endian magic, `ndim` sizes, then the data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(f"{path}: truncated or corrupt gzip ({_brief(error)}); download it again") from error
    header = 4 + 4 * ndim
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic != _IDX_MAGIC[ndim]:
        kind = "labels (idx1)" if ndim == 1 else "images (idx3)"
        raise DataError(f"{path}: magic number {magic} is not that of uint8 {kind}: {_IDX_MAGIC[ndim]}")
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header; download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes, header {dims} implies {expected} (truncated?); download it again"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)



# --------------------------------------------------------------------------- restricted unpickling
# The official CIFAR-10 python batches are Python 2 pickles of a dict whose 'data' is a numpy
# array. Unpickling that normally imports numpy and calls whatever globals the file names, which
# lets a crafted file run code. Here every global is refused except the three numpy names an
# array needs, and even those resolve to inert stand-ins that only record their arguments; the
# recorded bytes become an array through np.frombuffer with a plain numeric dtype.

_NUMERIC_DTYPE = re.compile(r"[<>|=]?[uif][1248]|[<>|=]?b1")


class _DtypeStub:
    """Records `numpy.dtype(spec, ...)` and its pickled state instead of calling numpy."""

    def __init__(self, spec: Any, *_: Any) -> None:
        self.spec = spec.decode("latin1") if isinstance(spec, bytes) else spec
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1:
            order = state[1]
            self.byteorder = order.decode("latin1") if isinstance(order, bytes) else order

    def to_numpy(self, where: str) -> np.dtype:
        spec = f"{self.byteorder}{self.spec}" if isinstance(self.byteorder, str) else None
        if not isinstance(self.spec, str) or spec is None or not _NUMERIC_DTYPE.fullmatch(spec):
            raise DataError(f"{where}: refusing array of dtype {self.spec!r}; only plain numeric ones are read")
        return np.dtype(spec)


class _ArrayStub:
    """Records the state numpy.ndarray would be rebuilt from: (version, shape, dtype, fortran, bytes)."""

    def __init__(self, *_: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_numpy(self, where: str) -> np.ndarray:
        state = self.state
        if not (isinstance(state, tuple) and len(state) == 5):
            raise DataError(f"{where}: malformed pickled array")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, bytes):
            raise DataError(f"{where}: refusing pickled array that is not raw numeric bytes")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise DataError(f"{where}: malformed pickled array shape {shape!r}")
        dtype = dtype.to_numpy(where)
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise DataError(f"{where}: pickled array of shape {shape} has {len(raw)} bytes (truncated?)")
        return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")


def _reconstruct_stub(*_: Any) -> _ArrayStub:
    return _ArrayStub()


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What Python 3 writes for bytes in protocol-2 pickles: `_codecs.encode(str, 'latin1')`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode call that is not a latin1 bytes literal")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_stub,  # numpy 1.x / Python 2 writers
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_stub,  # numpy 2.x writers
    ("numpy", "ndarray"): _ArrayStub,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _latin1_encode,  # Python 3 re-pickles at protocol 2
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only containers, bytes, strings, numbers and the inert array stand-ins above."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def restricted_unpickle(raw: bytes, where: str) -> Any:
    """Unpickles untrusted bytes (Python 2 or 3 pickles) without importing or calling anything."""
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # a malformed pickle fails in many ways; none may escape raw
        raise DataError(f"{where}: not a plain CIFAR-10 batch pickle ({_brief(error)})") from error


# --------------------------------------------------------------------------- TFDS


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
            with _removing_new_paths(root):
                splits = _tfds_splits(tfds, name, data_dir, download=True)
    except DataError:
        raise
    except Exception as error:  # download, preparation and reading fail in many library-specific ways
        raise DataError(f"{where} failed: {_brief(error)}") from error
    return _make_dataset(name, splits[0], splits[1], where, (f"{where} train", f"{where} test"))


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
    reason = _brief(outcome[0]) if outcome else f"no answer in {timeout_s:.0f} s"
    raise DataError(
        f"TFDS has no prepared {name} and cannot download it: {parts.hostname} is unreachable "
        f"({reason[:60]}); offline, pass --config.data.dir=DIR with the files, or "
        "--config.data.tfds_data_dir=DIR with a prepared copy"
    )


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


def _brief(error: BaseException) -> str:
    """One line from an exception, short enough to sit inside a one-line user message."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= _ERROR_DETAIL_CHARS else text[: _ERROR_DETAIL_CHARS - 3] + "..."


# --------------------------------------------------------------------------- splits


def validation_split(labels: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced (train_idx, val_idx), deterministic in `seed`, both sorted.

    `val_size` >= 1 is a count, in (0, 1) a fraction of the images, 0 means no validation set.
    Each class gives its proportional share (largest remainders round), so small validation sets
    still hold every class in the training proportions.
    """
    labels = _check_labels(labels)
    n = len(labels)
    count = _val_count(val_size, n)
    if count == 0:
        return np.arange(n), np.zeros((0,), np.int64)
    classes, class_counts = np.unique(labels, return_counts=True)
    quotas = count * class_counts / n
    shares = np.floor(quotas).astype(np.int64)
    leftover = count - shares.sum()
    shares[np.argsort(-(quotas - shares), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    val = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, shares)]
    )
    is_val = np.zeros(n, bool)
    is_val[val] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _val_count(val_size: float, n: int) -> int:
    val_size = float(val_size)
    if not math.isfinite(val_size) or val_size < 0:
        raise ConfigError(f"data.val_size={val_size} must be >= 0 (count >= 1, fraction in (0, 1), 0 = none)")
    if val_size == 0:
        return 0
    if val_size < 1:
        count = max(1, round(val_size * n))
    elif val_size.is_integer():
        count = int(val_size)
    else:
        raise ConfigError(f"data.val_size={val_size} must be a whole count (>= 1) or a fraction in (0, 1)")
    if count >= n:
        raise ConfigError(
            f"data.val_size={val_size} asks for {count} of {n} training images, leaving none to train on; "
            "lower --config.data.val_size (or raise data.train_limit)"
        )
    return count


def kfold_indices(labels: np.ndarray, num_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds: [(train_idx, val_idx)] with disjoint val sets that cover every index.

    Images are ordered by class (random within a class) and dealt round-robin, so every fold
    gets each class's images within one of its share, and fold sizes differ by at most one.
    """
    labels = _check_labels(labels)
    n = len(labels)
    if int(num_folds) != num_folds or not 2 <= num_folds <= n:
        raise ConfigError(f"num_folds={num_folds} must be a whole number in 2..{n} (the number of images)")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(n), labels))  # by class, random within a class
    fold_of = np.empty(n, np.int64)
    fold_of[order] = np.arange(n) % num_folds
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(int(num_folds))]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    return labels


# --------------------------------------------------------------------------- normalization


def normalization_constants(
    mean: float | Sequence[float], std: float | Sequence[float], num_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Config mean/std -> float32 arrays of shape (C,), as traced-friendly inputs for `normalize`.

    One value (or several equal ones, like the default (0.5, 0.5, 0.5) on a grayscale set) is
    broadcast to every channel; otherwise there must be exactly one value per channel.
    """
    constants = []
    for field, value in (("mean", mean), ("std", std)):
        values = np.atleast_1d(np.asarray(value, np.float64)).ravel()
        if not np.all(np.isfinite(values)):
            raise ConfigError(f"data.{field}={value} must be finite numbers")
        if len(values) != num_channels:
            if len(values) == 0 or not np.all(values == values[0]):
                raise ConfigError(
                    f"data.{field} has {len(values)} values {tuple(values.tolist())} but the images have "
                    f"{num_channels} channel(s): give {'1 value' if num_channels == 1 else f'1 or {num_channels} values'}"
                )
            values = np.full(num_channels, values[0])
        if field == "std" and np.any(values <= 0):
            raise ConfigError(f"data.std={value} must be > 0 in every channel")
        constants.append(values.astype(np.float32))
    return constants[0], constants[1]
