"""Tests for cifar_jax.data: every reader on tiny files written here, every bad input, splits,
normalization, TFDS under mock_data, and the real Fashion-MNIST files where Debian installed them."""

import gzip
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cifar_jax.data import catalog, datasets, holdout, local_files, normalization, safe_pickle, tfds_source
from cifar_jax.core import splits
from cifar_jax.errors import ConfigError, DataError
from helpers import FASHION_MNIST, needs_fashion_mnist

FASHION_MNIST_DIR = Path(FASHION_MNIST)
PER_BATCH = 4  # images per tiny CIFAR-10 batch file


# --------------------------------------------------------------------------- helpers


def data_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        dict(name="cifar10", source="auto", dir="", tfds_data_dir="", train_limit=0, test_limit=0)
    )
    config.update(overrides)
    return config


def random_split(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def cifar_batches(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Six tiny batches with the official base names, NHWC images."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: random_split(PER_BATCH, (32, 32, 3), seed + i) for i, name in enumerate(names)}


def cifar_binary_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    chw = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], chw], axis=1).tobytes()


class Py2StylePickler(pickle._Pickler):
    """Writes bytes and str as Python 2's cPickle wrote str (SHORT_BINSTRING / BINSTRING), the
    encoding of the official cifar-10-python batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def cifar_python_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(label) for label in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
        b"filenames": [b"img_%d.png" % i for i in range(len(images))],
    }
    out = io.BytesIO()
    Py2StylePickler(out, protocol=2).dump(batch)
    # numpy 2 names its module numpy._core; the official files (numpy 1, Python 2) say numpy.core.
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar(root: Path, form: str, batches: dict, archive: bool) -> Path:
    """Writes the batches as the official binary or python layout, extracted or as .tar.gz."""
    folder, suffix, encode = {
        "binary": ("cifar-10-batches-bin", ".bin", cifar_binary_bytes),
        "python": ("cifar-10-batches-py", "", cifar_python_bytes),
    }[form]
    files = {f"{folder}/{name}{suffix}": encode(*split) for name, split in batches.items()}
    root.mkdir(parents=True, exist_ok=True)
    if not archive:
        for relative, raw in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(raw)
        return root / folder
    path = root / f"cifar-10-{form}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for relative, raw in files.items():
            info = tarfile.TarInfo(relative)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    magic = {1: 2049, 3: 2051}[array.ndim]
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(directory: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in splits.items():
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


def expected_cifar(batches: dict) -> tuple[np.ndarray, np.ndarray]:
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])


def truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


# --------------------------------------------------------------------------- local readers


@pytest.mark.parametrize("form", ["binary", "python"])
@pytest.mark.parametrize("archive", [False, True], ids=["extracted", "tar.gz"])
def test_cifar_official_layouts(tmp_path, form, archive):
    batches = cifar_batches()
    write_cifar(tmp_path, form, batches, archive)
    ds = datasets.load_dataset(data_config(dir=str(tmp_path), source="local"))
    train_images, train_labels = expected_cifar(batches)
    np.testing.assert_array_equal(ds.train_images, train_images)
    np.testing.assert_array_equal(ds.train_labels, train_labels)
    np.testing.assert_array_equal(ds.test_images, batches["test_batch"][0])
    np.testing.assert_array_equal(ds.test_labels, batches["test_batch"][1])
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.image_shape == (32, 32, 3) and ds.num_classes == 10
    assert ds.class_names[0] == "airplane" and ds.class_names[-1] == "truck"


def test_cifar_python_pickle_matches_official_encoding():
    raw = cifar_python_bytes(*random_split(2, (32, 32, 3)))
    assert raw.startswith(b"\x80\x02}q") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"cnumpy\ndtype\n" in raw and b"U\x02u1" in raw  # Python 2 str opcodes, not unicode


def test_cifar_extracted_dir_given_directly(tmp_path):
    batches = cifar_batches()
    folder = write_cifar(tmp_path, "binary", batches, archive=False)
    ds = local_files.load_local("cifar10", folder)
    np.testing.assert_array_equal(ds.train_labels, expected_cifar(batches)[1])


def test_cifar_conventional_subdirectory(tmp_path):
    write_cifar(tmp_path / "cifar-10", "python", cifar_batches(), archive=True)
    ds = local_files.load_local("cifar10", tmp_path)
    assert len(ds.train_labels) == 5 * PER_BATCH and "cifar-10-python.tar.gz" in ds.source


def test_cifar_without_test_batch(tmp_path):
    batches = cifar_batches()
    del batches["test_batch"]
    write_cifar(tmp_path, "binary", batches, archive=False)
    ds = local_files.load_local("cifar10", tmp_path)
    assert ds.test_images is None and ds.test_labels is None


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_files(tmp_path, name):
    train, test = random_split(6, (28, 28), 1), random_split(3, (28, 28), 2)
    write_idx(tmp_path, {"train": train, "t10k": test})
    ds = datasets.load_dataset(data_config(name=name, dir=str(tmp_path)))
    np.testing.assert_array_equal(ds.train_images, train[0][..., None])
    np.testing.assert_array_equal(ds.train_labels, train[1])
    np.testing.assert_array_equal(ds.test_images, test[0][..., None])
    assert ds.image_shape == (28, 28, 1)
    assert ds.class_names == catalog.CLASS_NAMES[name]


def test_idx_uncompressed_in_torchvision_layout_without_test(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = random_split(5, (28, 28))
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    ds = local_files.load_local("fashion_mnist", tmp_path)
    np.testing.assert_array_equal(ds.train_images[..., 0], images)
    assert ds.test_images is None


def test_npz_train_and_test(tmp_path):
    train, test = random_split(7, (32, 32, 3), 1), random_split(3, (32, 32, 3), 2)
    np.savez(tmp_path / "train.npz", image=train[0], label=train[1])
    np.savez(tmp_path / "test.npz", image=test[0], label=test[1])
    ds = datasets.load_dataset(data_config(dir=str(tmp_path), train_limit=5, test_limit=2))
    np.testing.assert_array_equal(ds.train_images, train[0][:5])
    np.testing.assert_array_equal(ds.train_labels, train[1][:5])
    np.testing.assert_array_equal(ds.test_images, test[0][:2])
    assert ds.train_labels.dtype == np.int32


def test_npz_train_only_and_grayscale_channel(tmp_path):
    images, labels = random_split(4, (28, 28))
    np.savez(tmp_path / "train.npz", image=images, label=labels)
    ds = datasets.load_dataset(data_config(name="fashion_mnist", dir=str(tmp_path)))
    assert ds.train_images.shape == (4, 28, 28, 1) and ds.test_images is None


def test_npz_test_only_gives_empty_train(tmp_path):
    images, labels = random_split(3, (32, 32, 3))
    np.savez(tmp_path / "test.npz", image=images, label=labels)
    ds = local_files.load_local("cifar10", tmp_path)
    assert ds.train_images.shape == (0, 32, 32, 3) and len(ds.test_labels) == 3


def test_limit_larger_than_data_keeps_all(tmp_path):
    images, labels = random_split(4, (32, 32, 3))
    np.savez(tmp_path / "train.npz", image=images, label=labels)
    ds = datasets.load_dataset(data_config(dir=str(tmp_path), train_limit=100))
    assert len(ds.train_labels) == 4
    with pytest.raises(ConfigError, match="train_limit"):
        datasets.load_dataset(data_config(dir=str(tmp_path), train_limit=-1))


# --------------------------------------------------------------------------- restricted unpickling


class RunsCode:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    payload = {b"data": RunsCode(f"touch {marker}"), b"labels": [0]}
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(pickle.dumps(payload, protocol=2))  # as the official files
    with pytest.raises(DataError, match=r"refused global (posix|os|nt)\.system"):
        local_files.load_local("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",  # protocol 0 call of eval
        b"\x80\x02cnumpy\nload\nq\x00.",  # a numpy global outside the allow-list
        b"\x80\x02U\x03abc",  # truncated: no STOP
    ],
    ids=["eval", "numpy.load", "truncated"],
)
def test_restricted_unpickler_refuses_other_payloads(payload):
    with pytest.raises(DataError, match="not a plain CIFAR-10 batch pickle"):
        safe_pickle.restricted_unpickle(payload, "batch")


@pytest.mark.parametrize(
    "array, match",
    [
        (np.array([[None, 1]], dtype=object), "not raw numeric bytes"),
        (np.zeros((2, 3072), dtype=[("a", "u1")]), "refusing array of dtype"),
        (np.zeros((2, 3072), np.float32), "expected uint8"),
    ],
    ids=["object", "structured", "float"],
)
def test_cifar_python_batch_refuses_non_uint8_arrays(tmp_path, array, match):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (folder / name).write_bytes(pickle.dumps({b"data": array, b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DataError, match=match):
        local_files.load_local("cifar10", tmp_path)


def test_restricted_unpickler_reads_plain_values():
    value = {b"a": [1, 2.5, b"x", "y", (None, True)]}
    assert safe_pickle.restricted_unpickle(pickle.dumps(value, protocol=2), "x") == value


# --------------------------------------------------------------------------- bad input


def test_truncated_tar_archive(tmp_path):
    path = write_cifar(tmp_path, "binary", cifar_batches(), archive=True)
    truncate(path)
    with pytest.raises(DataError, match="truncated or corrupt archive"):
        local_files.load_local("cifar10", tmp_path)


def test_archive_missing_batches(tmp_path):
    batches = cifar_batches()
    del batches["data_batch_3"]
    write_cifar(tmp_path, "python", batches, archive=True)
    with pytest.raises(DataError, match="missing data_batch_3"):
        local_files.load_local("cifar10", tmp_path)


def test_truncated_cifar_binary_records(tmp_path):
    folder = write_cifar(tmp_path, "binary", cifar_batches(), archive=False)
    truncate(folder / "data_batch_2.bin", keep=0.9)
    with pytest.raises(DataError, match="data_batch_2.bin.*3073-byte"):
        local_files.load_local("cifar10", tmp_path)


def test_truncated_cifar_python_pickle(tmp_path):
    folder = write_cifar(tmp_path, "python", cifar_batches(), archive=False)
    truncate(folder / "data_batch_4")
    with pytest.raises(DataError, match="data_batch_4"):
        local_files.load_local("cifar10", tmp_path)


def test_truncated_idx_gzip(tmp_path):
    write_idx(tmp_path, {"train": random_split(5, (28, 28))})
    truncate(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated or corrupt gzip"):
        local_files.load_local("mnist", tmp_path)


def test_idx_size_disagrees_with_header(tmp_path):
    images, labels = random_split(5, (28, 28))
    tmp_path.joinpath("train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)[:-10]))
    tmp_path.joinpath("train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match="header .* implies"):
        local_files.load_local("mnist", tmp_path)


def test_idx_wrong_magic(tmp_path):
    images, labels = random_split(5, (28, 28))
    write_idx(tmp_path, {"train": (images, labels)})
    # labels written where images belong: magic 2049 instead of 2051
    tmp_path.joinpath("train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match="magic number 2049"):
        local_files.load_local("mnist", tmp_path)


def test_idx_labels_file_missing(tmp_path):
    write_idx(tmp_path, {"train": random_split(5, (28, 28))})
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no matching train-labels-idx1-ubyte.gz"):
        local_files.load_local("mnist", tmp_path)


def write_npz(directory: Path, images, labels, **extra) -> None:
    np.savez(directory / "train.npz", image=images, label=labels, **extra)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (
            np.zeros((3, 28, 28, 1), np.uint8),
            np.zeros(3, int),
            r"train.npz: images have shape \(3, 28, 28, 1\), cifar10 needs",
        ),
        (np.zeros((3, 32, 32), np.uint8), np.zeros(3, int), "images have shape"),
        (np.zeros((3, 32, 32, 3), np.float32), np.zeros(3, int), "float32, expected uint8"),
        (np.zeros((3, 32, 32, 3), np.uint8), np.array([0, 10, 2]), "labels span 0..10, cifar10 has classes"),
        (np.zeros((3, 32, 32, 3), np.uint8), np.array([0, -1, 2]), "labels span -1..2"),
        (np.zeros((3, 32, 32, 3), np.uint8), np.zeros(4, int), "3 images but 4 labels"),
        (np.zeros((3, 32, 32, 3), np.uint8), np.zeros(3, float), "1-d integer array"),
    ],
    ids=[
        "wrong-dataset-shape",
        "wrong-rank",
        "float-pixels",
        "label-too-big",
        "label-negative",
        "count-mismatch",
        "float-labels",
    ],
)
def test_bad_arrays(tmp_path, images, labels, match):
    write_npz(tmp_path, images, labels)
    with pytest.raises(DataError, match=match):
        datasets.load_dataset(data_config(dir=str(tmp_path), source="local"))


def test_bad_labels_in_cifar_binary_name_the_file(tmp_path):
    batches = cifar_batches()
    batches["test_batch"][1][0] = 12
    folder = write_cifar(tmp_path, "binary", batches, archive=False)
    with pytest.raises(DataError, match=f"{folder}/test_batch.bin: labels span"):
        local_files.load_local("cifar10", tmp_path)


def test_npz_missing_keys_and_garbage(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros(2), y=np.zeros(2))
    with pytest.raises(DataError, match="needs 'image'"):
        local_files.load_local("cifar10", tmp_path)
    (tmp_path / "train.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="not an npz \\(zip\\) file"):
        local_files.load_local("cifar10", tmp_path)


# --------------------------------------------------------------------------- source selection


def fake_dataset(name: str, source: str) -> catalog.Dataset:
    images, labels = random_split(2, catalog.IMAGE_SHAPES[name])
    return catalog.Dataset(name, images, labels.astype(np.int32), None, None, catalog.CLASS_NAMES[name], source)


def test_auto_prefers_local_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "load_tfds", lambda *a, **k: pytest.fail("TFDS must not be tried"))
    write_npz(tmp_path, *random_split(2, (32, 32, 3)))
    assert datasets.load_dataset(data_config(dir=str(tmp_path))).source.startswith("npz files")


def test_auto_uses_tfds_only_without_data_dir(monkeypatch):
    calls = []

    def fake_tfds(name, data_dir=None):
        calls.append((name, data_dir))
        return fake_dataset(name, "tfds")

    monkeypatch.setattr(tfds_source, "load_tfds", fake_tfds)
    ds = datasets.load_dataset(data_config(name="mnist", tfds_data_dir="/x/tfds"))
    assert ds.source == "tfds" and calls == [("mnist", "/x/tfds")]
    datasets.load_dataset(data_config(name="mnist"))  # no tfds_data_dir: TFDS's default
    assert calls[-1] == ("mnist", None)


def test_auto_reports_broken_local_files_without_trying_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "load_tfds", lambda *a, **k: pytest.fail("TFDS must not be tried"))
    write_npz(tmp_path, *random_split(2, (28, 28, 1)))
    with pytest.raises(DataError, match="cifar10 needs"):
        datasets.load_dataset(data_config(dir=str(tmp_path)))


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist", "mnist"])
@pytest.mark.parametrize("source", ["auto", "local"])
def test_explicit_dir_without_data_fails_at_once_in_one_short_line(tmp_path, monkeypatch, name, source):
    """A mistyped data.dir is authoritative: no TFDS fallback, one line naming the dir and files."""
    monkeypatch.setattr(tfds_source, "load_tfds", lambda *a, **k: pytest.fail("TFDS must not be tried"))
    deep = tmp_path / ("long-directory-name-" * 6)
    deep.mkdir()
    for directory, expected in ((deep, "holds no"), (tmp_path / "nowhere", "is not a directory")):
        with pytest.raises(DataError) as error:
            datasets.load_dataset(data_config(name=name, dir=str(directory), source=source))
        message = str(error.value)
        assert "\n" not in message and len(message) <= 300, message
        assert expected in message and "--config.data.dir" in message
    assert "train.npz" in message or "is not a directory" in message


def test_empty_dir_lists_the_file_names_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as error:
        datasets.load_dataset(data_config(name="fashion_mnist", dir="."))
    message = str(error.value)
    assert "data.dir=. holds no fashion_mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and "fashion-mnist/" in message


def test_local_source_errors(tmp_path):
    with pytest.raises(ConfigError, match="--config.data.dir"):
        datasets.load_dataset(data_config(source="local"))
    with pytest.raises(DataError, match="holds no cifar10 data set"):
        datasets.load_dataset(data_config(source="local", dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.source='web'"):
        datasets.load_dataset(data_config(source="web"))
    with pytest.raises(ConfigError, match="data.name='cifar100'"):
        datasets.load_dataset(data_config(name="cifar100"))


# --------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_tfds_with_mock_data(name):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = datasets.load_dataset(data_config(name=name, source="tfds", test_limit=4))
    assert ds.train_images.shape == (6, *catalog.IMAGE_SHAPES[name])
    assert ds.test_images.shape == (4, *catalog.IMAGE_SHAPES[name])
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.class_names == catalog.CLASS_NAMES[name] and ds.source.startswith(f"TFDS {name}")


def test_tfds_missing_data_is_a_data_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=f"TFDS mnist \\(data_dir={tmp_path}\\) failed: AssertionError"):
        tfds_source.load_tfds("mnist", str(tmp_path), download=False)


def test_tfds_offline_download_fails_fast_and_leaves_nothing(tmp_path):
    """The real offline path (this test machine has no network): seconds, one line, no debris."""
    pytest.importorskip("tensorflow_datasets")
    root = tmp_path / "tfds"
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        datasets.load_dataset(data_config(name="fashion_mnist", source="tfds", tfds_data_dir=str(root)))
    assert time.monotonic() - start < 15
    message = str(error.value)
    assert "unreachable" in message and "--config.data.dir=DIR" in message and len(message) <= 300
    assert not root.exists()


def test_failed_download_removes_what_it_created(tmp_path):
    root = tmp_path / "tfds"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "kept").write_text("the user's")
    with pytest.raises(OSError):
        with tfds_source._removing_new_paths(root):
            (root / "downloads" / "x.tmp").mkdir(parents=True)
            (root / "mnist" / "3.0.1.incomplete").mkdir()
            (root / "cifar10.partial").write_text("half")
            raise OSError("connection reset")
    assert sorted(p.name for p in root.rglob("*")) == ["kept", "mnist"]


def test_processes_sharing_a_tfds_dir_download_it_once(tmp_path, monkeypatch):
    """Two loaders of an unprepared data set in one data dir (as one process per GPU would be): the
    one that waited for the download lock finds the data prepared and does not download again."""
    import sys
    import threading
    import types

    prepared, downloads = threading.Event(), []

    def load(name, split, data_dir, download):
        if not prepared.is_set():
            if not download:
                raise AssertionError(f"{name} is not prepared in {data_dir}")
            downloads.append(threading.get_ident())
            time.sleep(0.3)  # a download long enough for the other loader to arrive
            prepared.set()
        batch = {"image": np.zeros((2, 28, 28, 1), np.uint8), "label": np.zeros(2, np.int64)}
        return [types.SimpleNamespace(batch=lambda chunk: [batch])] * len(split)

    fake_tfds = types.SimpleNamespace(load=load, as_numpy=lambda batches: batches, disable_progress_bar=lambda: None,
                                      core=types.SimpleNamespace(constants=types.SimpleNamespace(DATA_DIR=None)))
    fake_tf = types.SimpleNamespace(config=types.SimpleNamespace(set_visible_devices=lambda *a: None))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds)
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)
    monkeypatch.setattr(tfds_source, "_check_reachable", lambda name, url: None)
    loaded = []
    loaders = [threading.Thread(target=lambda: loaded.append(tfds_source.load_tfds("fashion_mnist", str(tmp_path))))
               for _ in range(2)]
    for loader in loaders:
        loader.start()
    for loader in loaders:
        loader.join()
    assert len(downloads) == 1 and len(loaded) == 2
    assert all(ds.train_images.shape == (2, 28, 28, 1) for ds in loaded)


# --------------------------------------------------------------------------- real data


@needs_fashion_mnist
def test_real_fashion_mnist():
    ds = datasets.load_dataset(data_config(name="fashion_mnist", dir=str(FASHION_MNIST_DIR), source="local"))
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (10000, 28, 28, 1)
    assert len(ds.train_labels) == 60000 and len(ds.test_labels) == 10000
    np.testing.assert_array_equal(np.bincount(ds.train_labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.test_labels), np.full(10, 1000))
    assert ds.class_names[9] == "Ankle boot"


# --------------------------------------------------------------------------- splits


def unbalanced_labels() -> np.ndarray:
    return np.repeat(np.arange(4), [50, 30, 15, 5])  # 100 images, classes 50/30/15/5


def test_validation_split_is_stratified_disjoint_and_covering():
    labels = unbalanced_labels()
    train, val = holdout.validation_split(labels, 20, seed=0)
    assert len(val) == 20 and len(train) == 80
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    np.testing.assert_array_equal(np.bincount(labels[val]), [10, 6, 3, 1])
    train, val = holdout.validation_split(labels, 0.25, seed=0)  # 12.5/7.5/3.75/1.25 -> sums to 25
    assert len(val) == 25
    assert all(abs(k - q) < 1 for k, q in zip(np.bincount(labels[val]), [12.5, 7.5, 3.75, 1.25]))


def test_validation_split_is_deterministic_in_seed():
    labels = np.tile(np.arange(10), 50)
    a = holdout.validation_split(labels, 100, seed=3)
    b = holdout.validation_split(labels, 100, seed=3)
    c = holdout.validation_split(labels, 100, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(np.bincount(labels[a[1]]), np.full(10, 10))


def test_validation_split_zero_and_errors():
    labels = unbalanced_labels()
    train, val = holdout.validation_split(labels, 0, seed=0)
    assert len(val) == 0 and np.array_equal(train, np.arange(100))
    for bad in (-1, 100, 150, 2.5):
        with pytest.raises(ConfigError, match="data.val_size"):
            holdout.validation_split(labels, bad, seed=0)


def test_kfold_is_disjoint_covering_and_stratified():
    labels = unbalanced_labels()
    folds = holdout.kfold_indices(labels, 5, seed=0)
    assert len(folds) == 5
    vals = [val for _, val in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), np.arange(100))
    for train, val in folds:
        assert not np.intersect1d(train, val).size and len(train) + len(val) == 100
        np.testing.assert_array_equal(np.bincount(labels[val], minlength=4), [10, 6, 3, 1])
    again = holdout.kfold_indices(labels, 5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    with pytest.raises(ConfigError, match="num_folds"):
        holdout.kfold_indices(labels, 1, seed=0)


# --------------------------------------------------------------------------- normalization


def test_model_input_matches_numpy_and_traces():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8))
    mean, std = normalization.normalization_constants((0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 3)
    expected = (np.asarray(images, np.float64) / 255 - mean) / std
    # rtol 1e-5: float32 rounding of a division and a subtraction, against a float64 reference
    np.testing.assert_allclose(splits.to_model_input(images, mean, std), expected, rtol=1e-5, atol=1e-5)
    jitted = jax.jit(splits.to_model_input)(images, jnp.asarray(mean), jnp.asarray(std))
    assert jitted.dtype == jnp.float32
    np.testing.assert_allclose(jitted, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        splits.to_model_input(images.astype(jnp.float32), mean, std)


def test_normalization_constants_broadcast_and_errors():
    mean, std = normalization.normalization_constants(0.5, [0.25], 3)
    np.testing.assert_array_equal(mean, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(std, [0.25, 0.25, 0.25])
    mean, _ = normalization.normalization_constants((0.5, 0.5, 0.5), 0.5, 1)  # equal values fit 1 channel
    np.testing.assert_array_equal(mean, [0.5])
    with pytest.raises(ConfigError, match=r"^data\.mean=\(0\.49, 0\.48, 0\.45\) must have 1 value or one per channel"):
        normalization.normalization_constants((0.49, 0.48, 0.45), 0.5, 1)
    with pytest.raises(ConfigError, match="data.std"):
        normalization.normalization_constants(0.5, (0.2, 0.0, 0.2), 3)
