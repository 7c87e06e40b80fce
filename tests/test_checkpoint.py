"""Checkpoints: exact round trip, resume after SIGKILL, corrupt checkpoints, refusals, evaluation."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.data import datasets, local_files
from cifar_jax.job import evaluation
from cifar_jax.core import splits
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.job.checkpoint import Checkpoints
from cifar_jax.errors import CheckpointError
from configs import test as test_config
from helpers import FASHION_MNIST, FASHION_MNIST_MISSING, REPO, needs_fashion_mnist, run_cli, synthetic_splits, tiny_config, train_runs

# A small, quick CLI job: 3 epochs of 1,600 Fashion-MNIST images, 2 seeds.
SMALL = ["--config", "configs/test.py", "--config.data.train_limit=2000", "--config.data.val_size=400",
         "--config.data.test_limit=400", "--config.model.dropout_rate=0.3"]


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(_raw, a), jax.tree.map(_raw, b))


def _raw(leaf):
    return jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf


def test_save_restore_round_trip_is_exact(tmp_path):
    state, _ = train_runs(tiny_config(num_seeds=2), synthetic_splits(), epochs=1)
    checkpoints = Checkpoints(str(tmp_path), keep=2, best_metric="val_accuracy")
    checkpoints.save(1, state, {"history": [1.5]}, best_value=0.5)
    checkpoints.wait()
    like = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), state)  # structure only
    epoch, restored, meta = checkpoints.restore(like)
    assert epoch == 1 and meta == {"history": [1.5]}
    assert_trees_equal(restored, state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    if not os.path.isdir(FASHION_MNIST):
        pytest.skip(FASHION_MNIST_MISSING)
    workdir = tmp_path_factory.mktemp("ckpt") / "run"
    result = run_cli(*SMALL, "--workdir", str(workdir), "--config.num_epochs=3")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def final_metrics(workdir) -> list[dict]:
    return json.loads((workdir / "results.json").read_text())["runs"]


@pytest.mark.slow
@needs_fashion_mnist
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(trained_workdir, tmp_path):
    workdir = tmp_path / "killed"
    args = [sys.executable, "-m", "cifar_jax.main", *SMALL, "--workdir", str(workdir), "--config.num_epochs=3"]
    process = subprocess.Popen(args + ["--config.checkpoint_every_epochs=1", "--config.progress_every_s=0"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # Printed after epoch 1 is trained, evaluated and its save started.
        wait_for_epoch_line(process, 1)
        deadline = time.time() + 120
        while not (workdir / "checkpoints" / "latest" / "1").exists():  # Orbax renames it when complete
            assert process.poll() is None, f"the run exited early with status {process.returncode}"
            assert time.time() < deadline, "no checkpoint of epoch 1 within 120 s"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)  # inside epoch 2, or (on a fast machine) later
        process.wait()
    resumed = run_cli(*SMALL, "--workdir", str(workdir), "--config.num_epochs=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert final_metrics(workdir) == final_metrics(trained_workdir)
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 1, 2, 2, 3, 3]


@pytest.mark.slow
@needs_fashion_mnist
def test_corrupt_newest_checkpoint_is_skipped(trained_workdir, tmp_path, caplog):
    workdir = tmp_path / "copy"
    shutil.copytree(trained_workdir, workdir)
    newest = workdir / "checkpoints" / "latest" / "3" / "state"
    for path in newest.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[:7])
    loaded = evaluation.load(str(workdir), "latest")
    assert loaded.epoch == 2
    assert "cannot be read" in caplog.text


@pytest.mark.slow
@needs_fashion_mnist
def test_best_checkpoint_is_the_best_validation_epoch(trained_workdir):
    rows = [json.loads(line) for line in (trained_workdir / "metrics.jsonl").read_text().splitlines()]
    mean_by_epoch = {e: np.mean([r["val_accuracy"] for r in rows if r["epoch"] == e]) for e in (1, 2, 3)}
    best_epoch = max(mean_by_epoch, key=lambda e: (mean_by_epoch[e], e))
    assert evaluation.load(str(trained_workdir), "best").epoch == best_epoch
    assert evaluation.load(str(trained_workdir), "2").epoch == 2


@pytest.mark.slow
@needs_fashion_mnist
def test_eval_cli_on_a_test_npz_elsewhere(trained_workdir, tmp_path):
    dataset = local_files.load_local("fashion_mnist", FASHION_MNIST)
    test_dir = tmp_path / "other"
    test_dir.mkdir()
    np.savez(test_dir / "test.npz", image=dataset.test_images[:300], label=dataset.test_labels[:300])
    result = run_cli("--mode=eval", "--workdir", str(trained_workdir), f"--config.data.dir={test_dir}",
                     "--config.data.test_limit=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test: 300 images" in result.stdout and "seed ensemble" in result.stdout
    report = json.loads((trained_workdir / "eval" / "latest-epoch3-test.json").read_text())
    assert len(report["runs"]) == 2 and report["num_images"] == 300
    assert all(0.5 < run["accuracy"] <= 1 for run in report["runs"])
    assert np.sum(report["runs"][0]["confusion"]) == 300


@pytest.mark.slow
@needs_fashion_mnist
def test_resume_with_another_model_is_refused_and_changes_nothing(trained_workdir):
    before = {p: p.stat().st_mtime_ns for p in trained_workdir.rglob("*") if p.name != workdir_lib.LOCK_FILE}
    result = run_cli(*SMALL, "--workdir", str(trained_workdir), "--config.num_epochs=3",
                     "--config.model.dense_features=(64,)", "--config.num_seeds=3")
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "model.dense_features" in error[0] and "num_seeds" in error[0]
    assert {p: p.stat().st_mtime_ns for p in trained_workdir.rglob("*") if p.name != workdir_lib.LOCK_FILE} == before


def test_overwrite_moves_the_old_run_aside(tmp_path):
    config = test_config.get_config()
    workdir_lib.claim(str(tmp_path), config, {"image_shape": [28, 28, 1]})
    (tmp_path / "results.json").write_text("{}")
    other = test_config.get_config()
    other.batch_size = 64
    with pytest.raises(CheckpointError, match="batch_size"):
        workdir_lib.claim(str(tmp_path), other, {})
    other.checkpoint.overwrite = True
    workdir_lib.claim(str(tmp_path), other, {})
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "results.json").read_text() == "{}"
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 64


def test_longer_training_may_resume():
    config, longer = test_config.get_config(), test_config.get_config()
    longer.num_epochs = 10
    longer.data.dir = "/elsewhere"
    assert workdir_lib.differing_fields(workdir_lib.config_to_dict(config), workdir_lib.config_to_dict(longer)) == []


@pytest.mark.slow
def test_notebook_api_predicts_from_uint8_and_refuses_it_in_model(trained_workdir):
    loaded = evaluation.load(str(trained_workdir), "latest")
    config = loaded.config
    dataset = datasets.load_dataset(config.data)
    images, labels = dataset.test_images[:200], dataset.test_labels[:200]
    probs = loaded.predict(images)
    assert probs.shape == (2, 200, 10)
    scored = evaluation.evaluate(loaded, images, labels)
    for run in range(2):
        assert np.mean(probs[run].argmax(-1) == labels) == pytest.approx(scored["runs"][run]["accuracy"])
    model = loaded.model(0)
    with pytest.raises(TypeError, match="predict"):
        model(jnp.asarray(images))
    inputs = splits.to_model_input(jnp.asarray(images), loaded.hparams["mean"][0], loaded.hparams["std"][0])
    np.testing.assert_allclose(jax.nn.softmax(model(inputs)), probs[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- integrity and write failures


@pytest.fixture(scope="module")
def saved_state():
    state, _ = train_runs(tiny_config(num_seeds=2), synthetic_splits(), epochs=1)
    return state


def save_epochs(workdir, state, epochs=(1, 2)) -> Checkpoints:
    checkpoints = Checkpoints(str(workdir), keep=3, best_metric="val_accuracy")
    for epoch in epochs:
        checkpoints.save(epoch, state, {"history": [epoch]}, best_value=float(epoch))
    checkpoints.wait()
    return checkpoints


def overwrite_array_bytes(step_dir) -> None:
    """Overwrites (never truncates) bytes in the middle of every array data file."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        raw = bytearray(path.read_bytes())
        middle = len(raw) // 2
        raw[middle:middle + 16] = bytes(255 - b for b in raw[middle:middle + 16])
        path.write_bytes(bytes(raw))


def tamper_digest(step_dir) -> None:
    """Keeps the arrays but changes the recorded checksum: only the checksum can notice."""
    path = step_dir / "meta" / "metadata"
    meta = json.loads(path.read_text())
    meta["state_checksum"] = "0" * len(meta["state_checksum"])
    path.write_text(json.dumps(meta))


def test_checkpoint_meta_holds_the_state_checksum_and_restore_hides_it(tmp_path, saved_state):
    save_epochs(tmp_path, saved_state, epochs=(1,))
    stored = json.loads((tmp_path / "checkpoints/latest/1/meta/metadata").read_text())
    assert stored["num_runs"] == 2 and re.fullmatch(r"[0-9a-f]+", stored["state_checksum"])
    assert len(stored["state_checksum"]) == 8 * len(jax.tree.leaves(saved_state))
    assert Checkpoints(str(tmp_path), keep=3, best_metric="val_accuracy").restore(saved_state)[2] == {"history": [1]}


def test_best_weights_round_trip_beside_the_state_and_are_none_where_not_saved(tmp_path, saved_state, caplog):
    """A job keeping best weights saves them as a third item with their own checksum; a checkpoint
    without them (another job, an earlier version) or with damaged ones gives None, never others."""
    best = (jax.tree.map(lambda x: x + 1, saved_state.params), saved_state.model_state)
    checkpoints = Checkpoints(str(tmp_path), keep=3, best_metric="val_accuracy")
    checkpoints.save(1, saved_state, {}, best_value=None)
    checkpoints.save(2, saved_state, {}, best_value=None, best_weights=best)
    checkpoints.save_partial(7, saved_state, {}, best_weights=best)
    checkpoints.wait()
    like = (saved_state.params, saved_state.model_state)
    assert_trees_equal(checkpoints.restore_best_weights(like, 2, num_runs=2), best)
    assert_trees_equal(checkpoints.restore_best_weights(like, None, num_runs=2), best)  # the mid-epoch one
    assert checkpoints.restore_best_weights(like, 1, num_runs=2) is None
    assert checkpoints.restore(saved_state)[2] == {}  # the checksums stay out of the meta
    meta_path = tmp_path / "checkpoints/latest/2/meta/metadata"
    meta = json.loads(meta_path.read_text())
    meta["best_weights_checksum"] = "0" * len(meta["best_weights_checksum"])
    meta_path.write_text(json.dumps(meta))
    assert checkpoints.restore_best_weights(like, 2, num_runs=2) is None
    assert "fail their checksum" in caplog.text


@pytest.mark.parametrize("damage", [overwrite_array_bytes, tamper_digest])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, saved_state, caplog, damage):
    checkpoints = save_epochs(tmp_path, saved_state)
    damage(tmp_path / "checkpoints/latest/2")
    epoch, restored, meta = checkpoints.restore(saved_state)
    assert epoch == 1 and meta == {"history": [1]}
    assert_trees_equal(restored, saved_state)
    assert "checkpoint of epoch 2" in caplog.text
    with pytest.raises(CheckpointError, match="^checkpoint of epoch 2 (cannot be read|fails its checksum)") as error:
        checkpoints.restore(saved_state, which="2")
    assert "\n" not in str(error.value)


def test_all_checkpoints_damaged_is_one_line_error(tmp_path, saved_state):
    checkpoints = save_epochs(tmp_path, saved_state)
    for epoch in (1, 2):
        tamper_digest(tmp_path / f"checkpoints/latest/{epoch}")
    tamper_digest(tmp_path / "checkpoints/best/2")
    for which in ("latest", "best"):
        with pytest.raises(CheckpointError) as error:
            checkpoints.restore(saved_state, which=which)
        message = str(error.value)
        assert "\n" not in message and len(message) <= 300 and ("checksum" in message or "no usable" in message)


def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, saved_state):
    """A file-size limit makes every large write fail with EFBIG, as a full disk would."""
    import resource

    checkpoints = save_epochs(tmp_path, saved_state, epochs=(1,))
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, limits[1]))
    try:
        with pytest.raises(CheckpointError) as error:
            checkpoints.save(2, saved_state, {"history": [2]}, best_value=None)
            checkpoints.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous_handler)
    message = str(error.value)
    assert "\n" not in message and "cannot save" in message and "[1] are intact" in message, message
    fresh = Checkpoints(str(tmp_path), keep=3, best_metric="val_accuracy")
    epoch, restored, _ = fresh.restore(saved_state)
    assert epoch == 1
    assert_trees_equal(restored, saved_state)


def start_small_run(workdir, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "cifar_jax.main", *SMALL, "--workdir", str(workdir), "--config.num_epochs=3",
            "--config.progress_every_s=0", *extra]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch_line(process: subprocess.Popen, epoch: int, timeout_s: float = 300.0) -> None:
    """Reads the child's stdout (on a thread, so a child that hangs without printing cannot block
    the suite) until its 'epoch N/' line, failing after `timeout_s`; the caller kills the child."""
    found = threading.Event()

    def read() -> None:
        for line in iter(process.stdout.readline, ""):
            if line.startswith(f"epoch {epoch}/"):
                found.set()
                return
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        raise AssertionError(f"no 'epoch {epoch}/' line within {timeout_s:.0f} s (the run hangs?)")
    if not found.is_set():
        details = process.stderr.read()[-2000:] if process.stderr is not None else ""
        raise AssertionError(f"the run ended before epoch {epoch}: {details}")


@pytest.mark.slow
@needs_fashion_mnist
def test_sigterm_mid_epoch_saves_exits_75_and_resumes_to_identical_numbers(trained_workdir, tmp_path):
    workdir = tmp_path / "preempted"
    process = start_small_run(workdir)
    try:
        wait_for_epoch_line(process, 1)
        process.send_signal(signal.SIGTERM)  # lands in epoch 2
        sent = time.time()
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 75, stderr[-2000:]
    assert time.time() - sent < 30
    assert "Traceback" not in stderr
    # Usually inside epoch 2; on a loaded machine the signal may land in epoch 3.
    assert re.fullmatch(r"preempted at epoch [23] step \d+; rerun the same command to resume",
                        stderr.strip().splitlines()[-1]), stderr[-500:]
    assert list((workdir / "checkpoints" / "partial").iterdir())  # the mid-epoch checkpoint
    resumed = run_cli(*SMALL, "--workdir", str(workdir), "--config.num_epochs=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "inside epoch" in resumed.stdout
    assert final_metrics(workdir) == final_metrics(trained_workdir)
    assert not list((workdir / "checkpoints" / "partial").iterdir())  # superseded by whole epochs


@pytest.mark.slow
@needs_fashion_mnist
def test_sigkill_after_a_periodic_mid_epoch_checkpoint_resumes_to_identical_numbers(trained_workdir, tmp_path):
    workdir = tmp_path / "killed"
    process = start_small_run(workdir, "--config.checkpoint.every_minutes=0.0001")  # after every chunk
    try:
        wait_for_epoch_line(process, 1)
        deadline = time.time() + 120
        while not any(int(p.name) > 50 for p in (workdir / "checkpoints" / "partial").glob("*")
                      if p.name.isdigit() and (p / "commit_success.txt").exists()):
            # a committed checkpoint inside epoch 2 (50 steps each); Orbax writes "<step>.orbax-checkpoint-tmp" first
            assert process.poll() is None and time.time() < deadline, "no mid-epoch checkpoint in epoch 2"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    if (workdir / "results.json").exists():
        pytest.skip("the run finished before it could be killed inside an epoch")
    resumed = run_cli(*SMALL, "--workdir", str(workdir), "--config.num_epochs=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "inside epoch" in resumed.stdout
    assert final_metrics(workdir) == final_metrics(trained_workdir)


@pytest.mark.slow
@needs_fashion_mnist
def test_ctrl_c_mid_epoch_saves_and_exits_130_without_a_traceback(tmp_path):
    workdir = tmp_path / "interrupted"
    process = start_small_run(workdir)
    try:
        wait_for_epoch_line(process, 1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert re.fullmatch(r"interrupted at epoch [23] step \d+; rerun the same command to resume",
                        stderr.strip().splitlines()[-1]), stderr[-500:]


def test_a_field_added_by_a_later_version_does_not_block_a_resume_while_off():
    stored = {"data": {"name": "cifar10"}, "num_seeds": 2}
    assert workdir_lib.differing_fields(stored, {"data": {"name": "cifar10", "shared_order": False},
                                                 "num_seeds": 2}) == []
    assert workdir_lib.differing_fields(stored, {"data": {"name": "cifar10", "shared_order": True},
                                                 "num_seeds": 2}) == ["data.shared_order"]
    # A later field whose old behaviour is not "off" matches at that value (ADDED_DEFAULTS).
    assert workdir_lib.differing_fields(stored, {**stored, "model": {"dropout_kind": "element"}}) == []
    assert workdir_lib.differing_fields(stored, {**stored, "model": {"dropout_kind": "channel"}}) == ["model.dropout_kind"]


@pytest.mark.slow
@needs_fashion_mnist
def test_checkpoint_meta_holds_what_resume_needs_and_does_not_grow_with_the_epochs(tmp_path):
    """The history lives in metrics.jsonl; a checkpoint's meta stays the same size (issue 22)."""
    result = run_cli("--config", "configs/test.py", "--config.data.train_limit=96", "--config.data.val_size=32",
                     "--config.data.test_limit=32", "--config.num_epochs=20", "--config.checkpoint.keep=20",
                     "--config.progress_every_s=0", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]

    def meta_bytes(epoch: int) -> int:
        return sum(f.stat().st_size for f in (tmp_path / "checkpoints" / "latest" / str(epoch) / "meta").rglob("*")
                   if f.is_file())
    assert meta_bytes(2) > 0 and abs(meta_bytes(20) - meta_bytes(2)) <= 0.1 * meta_bytes(2), (meta_bytes(2),
                                                                                               meta_bytes(20))
