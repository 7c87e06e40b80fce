"""The test split is scored at the final epoch and on each run's best weights, not every epoch
(job/best_runs.py); results.json holds the same numbers as when it was scored every epoch."""

import json
import shutil

import numpy as np
import pytest

from cifar_jax.job import train
from tests.helpers import tiny_config


def blob_data(directory, num_train: int = 352, num_test: int = 96) -> str:
    """Class-dependent blobs of Fashion-MNIST's shape with a test split, as npz files."""
    rng = np.random.default_rng(1)
    for name, n in (("train", num_train), ("test", num_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 120, (n, 28, 28, 1)) + (labels * 14)[:, None, None, None]
        np.savez(directory / f"{name}.npz", image=images.astype(np.uint8), label=labels.astype(np.int32))
    return str(directory)


def job(tmp_path, name: str, **overrides) -> tuple[dict, list[dict]]:
    config = tiny_config(**{"data.dir": blob_data(tmp_path), "data.train_limit": 0, "data.test_limit": 0,
                            "data.val_size": 96.0, "num_seeds": 3, "num_epochs": 4, "optim.learning_rate": 0.3,
                            **overrides})
    summary = train.train_and_evaluate(config, str(tmp_path / name))
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.mark.slow
def test_test_split_at_final_and_best_epochs_only_with_the_same_results(tmp_path):
    lazy, lazy_rows = job(tmp_path, "lazy")
    every, every_rows = job(tmp_path, "every", **{"eval.test_every_epoch": True})
    assert all(("test_accuracy" in row) == (row["epoch"] == 4) for row in lazy_rows)
    assert all("test_accuracy" in row for row in every_rows)
    best = [run["best_epoch"] for run in lazy["runs"]]
    assert min(best) < 4, best  # some run's best weights are not its final ones: they are scored apart
    for got, want in zip(lazy["runs"], every["runs"]):
        assert "best_test_accuracy" in got and "best_test_confusion" in got
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)
        assert set(got) == set(want)
    assert lazy["summary"].keys() == every["summary"].keys()


@pytest.mark.slow
def test_a_resumed_job_scores_the_best_weights_its_checkpoint_saved(tmp_path):
    """Resumed after epoch 3 with `checkpoint.keep=1` and the best-epoch checkpoint removed, the
    job has no checkpoint of earlier best epochs left: the best weights saved beside the state
    give the same best-epoch test numbers as the uninterrupted job (same machine: bit for bit)."""
    keep_one = {"checkpoint.keep": 1}
    straight, _ = job(tmp_path, "straight", **keep_one)
    job(tmp_path, "resumed", **keep_one, num_epochs=3)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "best")
    resumed, _ = job(tmp_path, "resumed", **keep_one)
    best = [run["best_epoch"] for run in straight["runs"]]
    assert min(best) < 3, best  # some run's best weights come from before the resume
    for got, want in zip(resumed["runs"], straight["runs"]):
        assert got["best_epoch"] == want["best_epoch"]
        for name in ("best_test_accuracy", "best_test_loss", "test_accuracy"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.slow
def test_a_stop_during_evaluation_saves_the_trained_epoch_and_the_resume_scores_it(tmp_path, monkeypatch):
    """SIGTERM landing while epoch 2 is scored (a long evaluation: 002's k-fold runs) stops the job
    between evaluation batches with a checkpoint of the trained epoch, well inside the grace period;
    the rerun scores that epoch without training it again and ends with the uninterrupted job's
    numbers (same machine: bit for bit)."""
    import signal

    from cifar_jax.errors import Interrupted

    straight, _ = job(tmp_path, "straight")
    real_score, scored = train.score_split, []

    def signalled_in_epoch_two(*args, **kwargs):
        scored.append(1)
        if len(scored) == 2:  # epoch 1 scores val, then epoch 2 val: the signal lands in its scoring
            signal.raise_signal(signal.SIGTERM)
        return real_score(*args, **kwargs)
    monkeypatch.setattr(train, "score_split", signalled_in_epoch_two)
    with pytest.raises(Interrupted, match=r"preempted at epoch 2 step \d+"):
        job(tmp_path, "stopped", **{"execution.stop_grace_s": 600.0})
    monkeypatch.setattr(train, "score_split", real_score)
    rows = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert {row["epoch"] for row in rows} == {1}  # epoch 2 trained, not recorded
    assert list((tmp_path / "stopped" / "checkpoints" / "partial").iterdir())
    resumed, rows = job(tmp_path, "stopped")
    assert sorted({row["epoch"] for row in rows}) == [1, 2, 3, 4] and len(rows) == 4 * 3  # 3 runs a row each
    assert resumed["runs"] == straight["runs"]
