"""A gs:// workdir: train -> SIGKILL -> resume -> eval through a bucket kept in a local directory
(`fake_gcs`: epath's gs:// backend, Orbax's TensorStore kvstore and its bucket query mapped there,
appends refused as an object store refuses them).

What this cannot cover: GCS itself (its consistency, latency, rate limits, retries and errors),
TensorFlow's GCS file system that epath uses for gs:// in a real run, TensorStore's gcs driver
that writes the checkpoint arrays, Orbax's hierarchical-namespace query, and the lease's race
between two hosts on a real store.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fake_gcs
from cifar_jax import config_paths
from cifar_jax.errors import WorkdirInUse
from cifar_jax.job import evaluation, lease, storage, train
from cifar_jax.job import workdir as workdir_lib
from configs import test as test_config
from cifar_jax.experiments import sweep
from helpers import REPO, needs_fashion_mnist
from test_sweep import base_config, fake_train

WORKDIR = "gs://bucket/runs/test"
JOB = {"num_seeds": 2, "data.train_limit": 300, "data.val_size": 100, "data.test_limit": 100, "num_epochs": 3,
       "checkpoint_every_epochs": 1, "progress_every_s": 0}


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs:// paths of this test live under the returned directory."""
    fake_gcs.install(str(tmp_path), monkeypatch.setattr)
    return tmp_path


def test_appends_and_atomic_writes_on_an_object_store_rewrite_whole_objects(bucket):
    path = "gs://b/w/metrics.jsonl"
    storage.makedirs("gs://b/w")
    storage.append_lines(path, ["1", "2"])
    storage.append_lines(path, ["3"])  # the fake refuses open(..., "a"): this rewrote the object
    storage.write_text_atomic("gs://b/w/results.json", "{}")
    assert (bucket / "b" / "w" / "metrics.jsonl").read_text() == "1\n2\n3\n"
    assert sorted(os.listdir(bucket / "b" / "w")) == ["metrics.jsonl", "results.json"]  # no temporary left
    assert storage.resolve("gs://b/w", "../other") == "gs://b/other"


def test_an_overwrite_on_an_object_store_moves_the_old_run_aside(bucket):
    storage.write_text_atomic("gs://b/w/config.json", "{}")
    moved = workdir_lib._move_aside("gs://b/w")
    assert moved.startswith("gs://b/w/replaced-")
    assert (bucket / "b" / "w" / os.path.basename(moved) / "config.json").exists()
    assert not (bucket / "b" / "w" / "config.json").exists()


def test_a_lease_overwritten_while_it_settles_refuses_the_taker(bucket, monkeypatch):
    """Two takers found no lease: the one whose lease the other overwrote before its read-back is refused."""
    other = {"pid": 1, "host": "elsewhere", "token": "theirs"}
    monkeypatch.setattr(lease.time, "sleep", lambda s: lease._renew("gs://b/w/.lease", other))
    storage.makedirs("gs://b/w")
    with pytest.raises(WorkdirInUse, match="in use by process 1 on elsewhere"):
        lease.take("gs://b/w")

def test_a_gs_workdir_lease_refuses_a_second_writer_and_is_released(bucket, monkeypatch):
    monkeypatch.setattr(lease, "SETTLE_S", 0.01)
    with workdir_lib.workdir_lock("gs://b/w"):
        assert json.loads((bucket / "b" / "w" / lease.LEASE_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirInUse, match=f"in use by process {os.getpid()}"):
            lease.take("gs://b/w", settle_s=0)
    assert not (bucket / "b" / "w" / lease.LEASE_FILE).exists()


def test_a_sweep_claims_trains_and_reports_in_a_gs_workdir(bucket, monkeypatch):
    """Its sweep.json, group leases, results.md and .csv, plots and TensorBoard go to the bucket."""
    monkeypatch.setattr(lease, "SETTLE_S", 0.01)
    local = fake_gcs.LocalBucket(str(bucket)).local
    config = base_config(axes=(("batch_size", (4, 8)),))
    result = sweep.run_sweep(config, "gs://b/sweep", train_fn=lambda c, workdir: fake_train(c, local(workdir)))
    root = bucket / "b" / "sweep"
    assert {"sweep.json", "results.md", "results.csv", "tensorboard", "batch_size=8"} <= set(os.listdir(root))
    assert result["report"]["markdown"] == "gs://b/sweep/results.md"
    assert "batch_size" in (root / "results.csv").read_text()
    plots = os.listdir(root / "plots")
    assert plots and all((root / "plots" / name).read_bytes()[:4] == b"\x89PNG" for name in plots)
    assert not list(root.glob("**/.lease"))


def start_training(root, cwd) -> subprocess.Popen:
    """The CLI trains JOB into WORKDIR, its gs:// paths under `root`, from a directory of its own."""
    overrides = [f"--config.{name}={value}" for name, value in JOB.items()]
    return subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "fake_gcs.py"), str(root),
                             "--config", os.path.join(REPO, "configs", "test.py"), *overrides, "--workdir", WORKDIR],
                            cwd=cwd, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@needs_fashion_mnist
def test_a_gs_workdir_trains_is_killed_resumes_and_evaluates(tmp_path, monkeypatch, capsys, caplog):
    root, cwd = tmp_path / "buckets", tmp_path / "cwd"
    cwd.mkdir()
    run_dir = root / "bucket" / "runs" / "test"
    process = start_training(root, cwd)
    try:
        deadline = time.time() + 180
        while not (run_dir / "checkpoints" / "latest" / "1" / "commit_success.txt").exists():
            assert process.poll() is None, process.communicate()[0][-3000:]
            assert time.time() < deadline, "no checkpoint of epoch 1 within 180 s"
            time.sleep(0.05)
        killed = process.pid
        assert json.loads((run_dir / lease.LEASE_FILE).read_text())["pid"] == killed  # a lease, not an flock
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert os.listdir(cwd) == []  # nothing became a local ./gs:/ path

    fake_gcs.install(str(root), monkeypatch.setattr)
    config = test_config.get_config()
    for name, value in JOB.items():
        config_paths.assign(config, name, value)
    with workdir_lib.workdir_lock(WORKDIR):  # the killed holder's lease is taken over at once
        summary = train.train_and_evaluate(config, WORKDIR)
    assert f"taking over the lease of process {killed}" in caplog.text
    assert "resuming" in capsys.readouterr().out
    assert not (run_dir / lease.LEASE_FILE).exists()
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 1, 2, 2, 3, 3]
    assert json.loads((run_dir / "results.json").read_text())["runs"] == summary["runs"]

    report = evaluation.run_eval(workdir_lib.load_config(WORKDIR), WORKDIR)
    np.testing.assert_allclose([r["accuracy"] for r in report["runs"]],
                               [r["test_accuracy"] for r in summary["runs"]], atol=1e-6)
    assert (run_dir / "eval" / "latest-epoch3-test.json").exists()
