"""Data sets from local files, for offline machines: npz, the official CIFAR-10 archives (binary
or pickled, extracted or not) and (Fashion-)MNIST IDX files, in a directory or the conventional
subdirectories below it (torchvision's layout included)."""

from __future__ import annotations

import gzip
import math
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifar_jax.data.catalog import IMAGE_SHAPES, Dataset, check_name, make_dataset
from cifar_jax.data.safe_pickle import as_array, restricted_unpickle
from cifar_jax.errors import DataError, brief

# Where people usually keep each data set below a data root (torchvision's layout included).
_SUBDIRS: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar10", "cifar-10"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
    "mnist": ("mnist", "MNIST/raw"),
}
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_RECORD = 1 + 32 * 32 * 3  # one label byte, then the image as CHW bytes
_IDX_MAGIC = {1: 2049, 3: 2051}  # uint8 labels (1-d) and images (3-d)
_MESSAGE_CHARS = 293  # a whole error message: "error: " + this fits the CLI's 300-character line

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
    return make_dataset(
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
        raise DataError(f"{path}: not a readable npz ({brief(error)}); write it with np.savez") from error


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
    return make_dataset(name, train, test, where, (f"{where} (train)", f"{where}/{test_name}"))


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
        message = f"{path}: truncated or corrupt archive ({brief(error)}); download it again"
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
    data = as_array(batch["data"], where, "'data'")
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
    return make_dataset(name, pair("train"), pair("t10k"), f"IDX files in {directory}", where)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parses an IDX file of uint8 values: big-endian magic, `ndim` sizes, then the data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(f"{path}: truncated or corrupt gzip ({brief(error)}); download it again") from error
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
