"""Every mistake a user can make ends in one short `error:` line and changes no existing run.

Table-driven over data files, configs, flags, workdirs and checkpoints. The cases run in this
process through `main.cli` (a fresh flag set per call), so 80 command lines cost one jax and
TensorFlow import; two run as real processes to cover the console path. Each case asserts: a
non-zero exit status, exactly one line of output, starting `error: `, at most 300 characters, no
traceback, and that no file of the pre-trained run (nor of a case's own copy of it) changed.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import json
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from cifar_jax.cli import main
from cifar_jax.job.workdir import LOCK_FILE, workdir_lock
from helpers import REPO, needs_fashion_mnist

pytestmark = needs_fashion_mnist

BASE = ["--config", "configs/test.py", "--config.data.train_limit=256", "--config.data.val_size=64",
        "--config.data.test_limit=64", "--config.num_epochs=2"]

@dataclasses.dataclass(frozen=True)
class Env:
    """What a case may use: its own scratch directory and the pre-trained run."""

    tmp: Path
    run: Path

    @property
    def fresh(self) -> str:
        return str(self.tmp / "fresh-workdir")

    def copy_of_run(self) -> Path:
        copy = self.tmp / "run-copy"
        if not copy.exists():
            shutil.copytree(self.run, copy)
        return copy

    def dir(self, name: str = "data") -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    process: bool = False  # run as a real `python -m cifar_jax.main` process
    marks: tuple = ()


# --------------------------------------------------------------------------- file writers


def npz_dir(env: Env, shape=(28, 28, 1), n=300, dtype=np.uint8, labels=None, keys=("image", "label")) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *shape)).astype(dtype)
    labels = rng.integers(0, 10, n) if labels is None else labels
    directory = env.dir()
    np.savez(directory / "train.npz", **dict(zip(keys, (images, labels))))
    return directory


def raw_file(env: Env, name: str, content: bytes) -> Path:
    directory = env.dir()
    (directory / name).write_bytes(content)
    return directory


def idx_bytes(magic: int, dims: tuple[int, ...], payload_size: int | None = None) -> bytes:
    size = int(np.prod(dims)) if payload_size is None else payload_size
    return struct.pack(f">I{len(dims)}I", magic, *dims) + bytes(size)


def idx_dir(env: Env, images: bytes, labels: bytes | None) -> Path:
    directory = raw_file(env, "train-images-idx3-ubyte.gz", gzip.compress(images))
    if labels is not None:
        raw_file(env, "train-labels-idx1-ubyte.gz", gzip.compress(labels))
    return directory


def corrupt_idx_gzip(env: Env) -> Path:
    directory = idx_dir(env, idx_bytes(2051, (300, 28, 28)), idx_bytes(2049, (300,)))
    (directory / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    return directory


def truncated_npz(env: Env) -> Path:
    directory = npz_dir(env)
    raw = (directory / "train.npz").read_bytes()
    (directory / "train.npz").write_bytes(raw[: len(raw) // 2])
    return directory


def truncated_cifar_tar(env: Env) -> Path:
    directory = env.dir()
    tar_path = directory / "cifar-10-binary.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        member = directory / "data_batch_1.bin"
        member.write_bytes(bytes(3073 * 20))
        tar.add(member, arcname="cifar-10-batches-bin/data_batch_1.bin")
        member.unlink()
    raw = tar_path.read_bytes()
    tar_path.write_bytes(raw[: len(raw) // 2])
    return directory


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def evil_cifar_pickles(env: Env) -> Path:
    directory = env.dir()
    for i in range(1, 6):
        (directory / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2))
    return directory


def config_file(env: Env, text: str) -> str:
    path = env.dir("configs") / "user_config.py"
    path.write_text(text)
    return str(path)


def tamper_checkpoints(run: Path, which: str = "*") -> None:
    """Changes the recorded checksum of every checkpoint (`which`: latest, best or *)."""
    for meta in run.glob(f"checkpoints/{which}/*/meta/metadata"):
        record = json.loads(meta.read_text())
        record["state_sha256"] = "0" * 64
        meta.write_text(json.dumps(record))


def damaged_copy(env: Env, which: str = "*") -> str:
    copy = env.copy_of_run()
    tamper_checkpoints(copy, which)
    return str(copy)


def garbage_config_json(env: Env) -> str:
    copy = env.copy_of_run()
    (copy / "config.json").write_text("{not json")
    return str(copy)


def a_file(env: Env) -> str:
    path = env.tmp / "a-file"
    path.write_text("not a directory")
    return str(path)


# --------------------------------------------------------------------------- the cases


def user_config(*lines: str, mode: str = "train") -> Callable[[Env], list[str]]:
    """A config file that changes configs/test.py by `lines` (what a flag cannot express)."""
    body = "".join(f"    {line}\n" for line in ("c = test.get_config()", *lines, "return c"))
    text = f"import ml_collections\nfrom configs import test\n\n\ndef get_config():\n{body}"
    return lambda env: ["--config", config_file(env, text), *BASE[2:], f"--mode={mode}", "--workdir", env.fresh]


def run(*extra: str) -> Callable[[Env], list[str]]:
    """BASE plus `extra` on the pre-trained run's workdir (data.dir may change between resumes)."""
    return lambda env: [*BASE, *extra, "--workdir", str(env.run)]


def fresh(*extra: str) -> Callable[[Env], list[str]]:
    return lambda env: [*BASE, *extra, "--workdir", env.fresh]


def data_dir(make: Callable[[Env], Path], *extra: str) -> Callable[[Env], list[str]]:
    return lambda env: [*BASE, f"--config.data.dir={make(env)}", *extra, "--workdir", str(env.run)]


def eval_of(workdir: Callable[[Env], str], *extra: str) -> Callable[[Env], list[str]]:
    return lambda env: ["--mode=eval", "--workdir", workdir(env), *extra]


CASES = [
    # data files
    Case("data-empty-dir", data_dir(lambda env: env.dir())),
    Case("data-missing-dir", data_dir(lambda env: env.tmp / "no-such-dir")),
    Case("data-dir-is-a-file", data_dir(lambda env: Path(a_file(env)))),
    Case("npz-truncated", data_dir(truncated_npz)),
    Case("npz-garbage", data_dir(lambda env: raw_file(env, "train.npz", b"not a zip file at all"))),
    Case("npz-missing-label", data_dir(lambda env: npz_dir(env, keys=("image", "labels")))),
    Case("npz-wrong-image-shape", data_dir(lambda env: npz_dir(env, shape=(32, 32, 3)))),
    Case("npz-float-images", data_dir(lambda env: npz_dir(env, dtype=np.float32))),
    Case("npz-label-out-of-range", data_dir(lambda env: npz_dir(env, labels=np.full(300, 10)))),
    Case("npz-negative-label", data_dir(lambda env: npz_dir(env, labels=np.full(300, -1)))),
    Case("npz-count-mismatch", data_dir(lambda env: npz_dir(env, labels=np.zeros(299, int)))),
    Case("idx-wrong-magic", data_dir(lambda env: idx_dir(env, idx_bytes(1234, (300, 28, 28)),
                                                         idx_bytes(2049, (300,))))),
    Case("idx-truncated", data_dir(lambda env: idx_dir(env, idx_bytes(2051, (300, 28, 28), 1000),
                                                       idx_bytes(2049, (300,))))),
    Case("idx-corrupt-gzip", data_dir(corrupt_idx_gzip)),
    Case("idx-without-labels", data_dir(lambda env: idx_dir(env, idx_bytes(2051, (300, 28, 28)), None))),
    Case("idx-labels-wrong-magic", data_dir(lambda env: idx_dir(env, idx_bytes(2051, (300, 28, 28)),
                                                                idx_bytes(2051, (300,))))),
    Case("idx-wrong-image-size", data_dir(lambda env: idx_dir(env, idx_bytes(2051, (300, 32, 32)),
                                                              idx_bytes(2049, (300,))))),
    Case("cifar-truncated-archive", lambda env: [*BASE, "--config.data.name=cifar10",
                                                 f"--config.data.dir={truncated_cifar_tar(env)}", "--workdir", env.fresh]),
    Case("cifar-malicious-pickle", lambda env: [*BASE, "--config.data.name=cifar10",
                                                f"--config.data.dir={evil_cifar_pickles(env)}", "--workdir", env.fresh]),
    Case("source-local-without-dir", run("--config.data.source=local", "--config.data.dir=")),
    Case("source-unknown", run("--config.data.source=web")),
    Case("data-name-unknown", fresh("--config.data.name=cifar100")),
    Case("tfds-offline", fresh("--config.data.source=tfds", "--config.data.tfds_data_dir=/tmp/cifar_jax-no-tfds")),
    # config files and values
    Case("config-file-missing", lambda env: ["--config", "configs/no_such.py", "--workdir", env.fresh], process=True),
    Case("config-syntax-error", lambda env: ["--config", config_file(env, "def get_config(:\n"), "--workdir", env.fresh]),
    Case("config-without-get_config", lambda env: ["--config", config_file(env, "X = 1\n"), "--workdir", env.fresh]),
    Case("config-raising", lambda env: ["--config", config_file(env, "def get_config():\n    raise RuntimeError('boom')\n"),
                                        "--workdir", env.fresh]),
    Case("config-argument-unknown", lambda env: ["--config", "configs/fashion_mnist.py:nope", "--workdir", env.fresh]),
    Case("field-misspelled", run("--config.num_seed=2")),
    Case("nested-field-misspelled", run("--config.optim.nme=adam")),
    Case("section-misspelled", run("--config.optimizer.name=adam")),
    Case("field-wrong-type", run("--config.num_seeds=two")),
    Case("batch-size-negative", fresh("--config.batch_size=-1")),
    Case("batch-size-above-train-set", fresh("--config.batch_size=100000")),
    Case("val-size-above-train-limit", fresh("--config.data.val_size=1000")),
    Case("val-size-not-whole", fresh("--config.data.val_size=1.5")),
    Case("train-limit-negative", fresh("--config.data.train_limit=-5")),
    Case("num-folds-one", fresh("--config.data.num_folds=1")),
    Case("optimizer-unknown", fresh("--config.optim.name=sgdd")),
    Case("schedule-unknown", fresh("--config.optim.schedule=cosine")),
    Case("warmup-longer-than-run", fresh("--config.optim.warmup_epochs=5.0")),
    Case("model-unknown", fresh("--config.model.name=vgg")),
    Case("augment-mode-unknown", fresh("--config.augment.crop_padding=2", "--config.augment.crop_mode=mirror")),
    Case("checkpoint-keep-zero", fresh("--config.checkpoint.keep=0")),
    Case("num-seeds-zero", fresh("--config.num_seeds=0")),
    Case("several-values-wrong-at-once", fresh("--config.num_epochs=0", "--config.eval_batch_size=0",
                                               "--config.optim.name=sgdd")),
    Case("num-epochs-zero", fresh("--config.num_epochs=0")),
    Case("eval-batch-size-zero", fresh("--config.eval_batch_size=0")),
    Case("dropout-rate-above-one", fresh("--config.model.dropout_rate=1.5")),
    Case("learning-rate-negative", fresh("--config.optim.learning_rate=-0.1")),
    Case("mean-wrong-channel-count", fresh("--config.data.mean=(0.1,0.2,0.3)")),
    Case("runs-per-group-negative", fresh("--config.execution.runs_per_group=-1")),
    Case("grid-not-traced", run("--config.hparam_grid.batch_size=(16,32)")),
    Case("grid-malformed", run("--config.hparam_grid.learning_rate=(0.1,")),
    Case("grid-empty", run("--config.hparam_grid.learning_rate=()")),
    Case("grid-invalid-value", fresh("--config.hparam_grid.learning_rate=(0.1,-1.0)")),
    Case("grid-value-not-a-number-in-file", user_config("c.hparam_grid.learning_rate = (0.1, 'fast')")),
    Case("batch-size-zero", fresh("--config.batch_size=0")),
    Case("seed-negative", fresh("--config.seed=-1")),
    Case("seed-not-an-integer-in-file", user_config("c = ml_collections.ConfigDict({**c.to_dict(), 'seed': '0'})")),
    Case("data-seed-negative", fresh("--config.data.seed=-1")),
    Case("data-seed-not-an-integer-in-file",
         user_config("c.data = ml_collections.ConfigDict({**c.data.to_dict(), 'seed': 1.5})")),
    Case("best-metric-unknown", fresh("--config.checkpoint.best_metric=val_acc")),
    Case("best-metric-without-validation", fresh("--config.data.val_size=0")),
    Case("model-field-ignored-by-resnet18", fresh("--config.model.name=resnet18", "--config.model.activation=gelu")),
    Case("model-field-ignored-by-block-cnn", user_config("c.model.name = 'block_cnn'; c.model.pool = 'avg'",
                                                         "c.model.conv_features, c.model.kernel_size = (6, 16), (5, 5)",
                                                         "c.model.dense_features = (120, 84)")),
    Case("sweep-over-a-field-the-model-ignores", user_config(
        "c.model.name = 'resnet18'; c.model.conv_features = (6, 16); c.model.dense_features = (120, 84)",
        "c.sweep = ml_collections.ConfigDict({'axes': (('model.activation', ('relu', 'gelu')),)})", mode="sweep")),
    Case("sweep-alpha-not-a-number", user_config(
        "c.sweep = ml_collections.ConfigDict({'axes': (('batch_size', (16, 32)),), 'alpha': 'five percent'})",
        mode="sweep")),
    Case("reflect-crop-larger-than-image", fresh("--config.augment.crop_padding=28",
                                                 "--config.augment.crop_mode=reflect")),
    Case("many-values-wrong-at-once", fresh(*(f"--config.{field}=0" for field in (
        "num_epochs", "eval_batch_size", "batch_size", "checkpoint.keep", "num_seeds", "checkpoint_every_epochs")),
        "--config.optim.name=sgdd", "--config.optim.schedule=cosine", "--config.model.name=vgg")),
    # flags
    Case("mode-unknown", lambda env: [*BASE, "--mode=fit", "--workdir", env.fresh], process=True),
    Case("eval-without-workdir", lambda env: ["--mode=eval"]),
    Case("report-of-a-plain-config", lambda env: [*BASE, "--mode=report", "--workdir", env.fresh]),
    Case("flag-unknown", run("--bogus=1")),
    Case("flag-without-config-prefix", run("--num_epochs=3")),
    Case("stray-argument", run("extra")),
    Case("config-missing-for-train", lambda env: ["--workdir", env.fresh]),
    Case("verbosity-not-a-number", run("--verbosity=loud")),
    Case("sweep-without-spec", lambda env: [*BASE, "--mode=sweep", "--workdir", env.fresh]),
    # workdirs
    Case("workdir-of-another-config", run("--config.batch_size=16")),
    Case("workdir-is-a-file", lambda env: [*BASE, "--workdir", a_file(env)]),
    Case("workdir-below-a-file", lambda env: [*BASE, "--workdir", a_file(env) + "/run"]),
    Case("workdir-unwritable", lambda env: [*BASE, "--workdir", "/proc/cifar-jax-run"]),
    Case("workdir-in-use", run()),  # the test holds the lock
    Case("workdir-config-json-garbage", lambda env: [*BASE, "--workdir", garbage_config_json(env)]),
    Case("eval-empty-workdir", eval_of(lambda env: str(env.dir("empty-run")))),
    Case("eval-missing-workdir", eval_of(lambda env: str(env.tmp / "never-trained"))),
    Case("eval-config-json-garbage", eval_of(garbage_config_json)),
    # checkpoints
    Case("eval-all-checkpoints-damaged", eval_of(damaged_copy)),
    Case("eval-best-checkpoint-damaged", eval_of(lambda env: damaged_copy(env, "best"), "--config.eval.checkpoint=best")),
    Case("eval-epoch-damaged", eval_of(damaged_copy, "--config.eval.checkpoint=1")),
    Case("eval-epoch-absent", eval_of(lambda env: str(env.run), "--config.eval.checkpoint=7")),
    Case("eval-checkpoint-name-unknown", eval_of(lambda env: str(env.run), "--config.eval.checkpoint=newest")),
    Case("eval-split-unknown", eval_of(lambda env: str(env.run), "--config.eval.split=valid")),
    Case("eval-field-misspelled", eval_of(lambda env: str(env.run), "--config.eval.chekpoint=best")),
    Case("eval-config-of-another-carve", eval_of(lambda env: str(env.run), "--config", "configs/test.py", *BASE[2:],
                                                 "--config.data.val_size=128", "--config.eval.split=val")),
    Case("eval-override-of-the-carve", eval_of(lambda env: str(env.run), "--config.data.seed=3",
                                               "--config.eval.split=val")),
    Case("rerun-all-checkpoints-damaged", lambda env: [*BASE, "--workdir", damaged_copy(env)]),
    Case("resume-longer-all-checkpoints-damaged",
         lambda env: [*BASE, "--config.num_epochs=3", "--workdir", damaged_copy(env)]),
]


def test_there_are_at_least_40_distinct_cases():
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)


# --------------------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("malformed") / "run"
    assert main.cli(["prog", *BASE, "--workdir", str(workdir)]) == 0
    return workdir


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """(mtime, sha256) of every file of the runs, but the lock (every command takes it)."""
    files = [p for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file() and p.name != LOCK_FILE]
    return {str(p): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files}


def invoke(argv: list[str], process: bool, capfd) -> tuple[int, str]:
    if process:
        result = subprocess.run([sys.executable, "-m", "cifar_jax.main", *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        return result.returncode, result.stdout + result.stderr
    capfd.readouterr()
    code = main.cli(["prog", *argv])
    out, err = capfd.readouterr()
    return code, out + err


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_mistake_ends_in_one_short_line_and_changes_nothing(case, trained_run, tmp_path, capfd):
    env = Env(tmp=tmp_path, run=trained_run)
    argv = case.argv(env)
    copy = tmp_path / "run-copy"
    before = snapshot(trained_run, copy)
    with workdir_lock(str(trained_run)) if case.id == "workdir-in-use" else contextlib.nullcontext():
        code, output = invoke(argv, case.process, capfd)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code != 0, output
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and len(lines[0]) <= 300, lines[0]
    assert snapshot(trained_run, copy) == before
    assert not (tmp_path / "fresh-workdir").exists()  # nothing stray, nothing refusing the corrected rerun


@pytest.mark.parametrize("case_id, fixed", [
    ("batch-size-zero", ["--config.batch_size=16"]),  # a static check
    ("reflect-crop-larger-than-image", ["--config.augment.crop_padding=2", "--config.augment.crop_mode=reflect"]),
])
def test_the_corrected_rerun_of_a_refused_start_is_accepted(case_id, fixed, trained_run, tmp_path, capfd):
    """A refused start (reflect padding is refused by the trace of a train step) leaves nothing in
    the workdir that would refuse the corrected command."""
    env = Env(tmp=tmp_path, run=trained_run)
    (case,) = [c for c in CASES if c.id == case_id]
    assert invoke(case.argv(env), False, capfd)[0] == 1
    code, output = invoke([*BASE, *fixed, "--config.dev_run=True", "--workdir", env.fresh], False, capfd)
    assert code == 0, output


def test_eval_with_the_runs_own_config_file_is_accepted(trained_run, tmp_path, capfd):
    """The other side of eval-config-of-another-carve: the config the run was trained with, plus
    fields that may change after training, scores the run's own validation carve."""
    copy = Env(tmp=tmp_path, run=trained_run).copy_of_run()
    code, output = invoke(["--mode=eval", "--config", "configs/test.py", *BASE[2:], "--config.eval.split=val",
                           "--config.num_epochs=5", "--workdir", str(copy)], False, capfd)
    assert code == 0 and "val: 64 images" in output, output
