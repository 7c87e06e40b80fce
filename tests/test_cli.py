"""The command line's first contact: quiet start, console script, one writer per workdir, dev runs."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from cifar_jax.data import catalog, holdout
from cifar_jax.job import dev_run
from cifar_jax.cli import main
from cifar_jax.cli import quiet
from cifar_jax.core import runs
from cifar_jax.experiments import sweep
from cifar_jax.job import validation
from cifar_jax.errors import CheckpointError
from cifar_jax.job.workdir import LOCK_FILE, workdir_lock
from helpers import REPO, needs_fashion_mnist, run_cli

TINY = ["--config", "configs/test.py", "--config.data.train_limit=512", "--config.data.val_size=128",
        "--config.data.test_limit=128", "--config.num_epochs=1"]
CHATTER = ("oneDNN", "absl::InitializeLog", "CUDA", "cuda", "TensorRT", "cpu_feature_guard")


# --------------------------------------------------------------------------- quiet start


@pytest.mark.parametrize("argv, level", [
    ([], -1), (["--verbosity=1"], 1), (["--verbosity", "2"], 2), (["-v", "1"], 1), (["-v1"], 1), (["-v=0"], 0),
    (["--verbosity=x"], -1)])
def test_requested_verbosity(argv, level):
    assert quiet.requested_verbosity(["prog", *argv]) == level


def test_configure_sets_only_unset_variables(monkeypatch):
    monkeypatch.setattr(quiet, "active", False)
    for name in quiet.QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert not quiet.configure(["prog", "--verbosity=1"]) and "GRPC_VERBOSITY" not in os.environ
    assert quiet.configure(["prog"]) and quiet.active
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's own setting wins
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


@pytest.mark.slow
@needs_fashion_mnist
def test_a_normal_run_prints_no_library_chatter(tmp_path):
    result = run_cli(*TINY, "--workdir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert not [word for word in CHATTER if word in output], output
    assert any(line.startswith("epoch 1/1") for line in output.splitlines())


# --------------------------------------------------------------------------- console script


def test_console_script_is_declared_and_prints_help():
    scripts = tomllib.loads((Path(REPO) / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"cifar-jax": "cifar_jax.cli.main:run"}
    code = "import sys; from cifar_jax.cli.main import run; sys.argv = ['cifar-jax', '--help']; run()"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: cifar-jax") and "--workdir" in result.stdout


def test_missing_config_file_is_one_line_in_a_real_process(tmp_path):
    result = run_cli("--config", "configs/no_such.py", "--workdir", str(tmp_path / "w"))
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1 and lines == [
        "error: --config configs/no_such.py: no such file; the study configs are in configs/ and configs/sweeps/"]
    assert not (tmp_path / "w").exists()


def test_hparam_grid_on_the_command_line_reaches_the_config():
    argv, grid = main.split_grid_flags(["p", "--config.hparam_grid.learning_rate=(0.1, 0.01)",
                                        "--config.hparam_grid.momentum", "0.9", "--workdir=w"])
    assert argv == ["p", "--workdir=w"] and grid == {"learning_rate": "(0.1, 0.01)", "momentum": "0.9"}
    from configs import test as test_config
    config = test_config.get_config()
    config.lock()
    main.apply_grid(config, grid)
    assert config.hparam_grid.learning_rate == (0.1, 0.01) and config.hparam_grid.momentum == (0.9,)
    assert len(runs.make_run_grid(config, 1).settings) == 2


# --------------------------------------------------------------------------- one writer per workdir


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    with workdir_lock(str(tmp_path)):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(CheckpointError, match=f"in use by process {os.getpid()} on {holder['host']}"):
            with workdir_lock(str(tmp_path)):
                pass
    assert not (tmp_path / LOCK_FILE).exists()  # released
    with workdir_lock(str(tmp_path)):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": "h", "start": "earlier"}))
    with workdir_lock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {int(dead.stdout)}" in caplog.text


def test_a_workdir_created_for_a_failed_start_is_removed(tmp_path):
    with pytest.raises(CheckpointError):
        with workdir_lock(str(tmp_path / "typo")):
            raise CheckpointError("the start failed")
    with workdir_lock(str(tmp_path / "used")):
        (tmp_path / "used" / "config.json").write_text("{}")
    assert not (tmp_path / "typo").exists() and (tmp_path / "used" / "config.json").exists()


def test_a_workdir_deleted_under_the_job_is_one_line_not_a_traceback(tmp_path, monkeypatch, capfd):
    """What a user who removes a run's folder while it trains sees (it was a traceback through the
    lock's release, which found its own file gone)."""
    workdir = tmp_path / "run"

    def train_then_lose_the_folder(config, workdir_arg, mode):
        with workdir_lock(workdir_arg):
            group = Path(workdir_arg) / "E1" / "all"
            group.mkdir(parents=True)
            shutil.rmtree(workdir_arg)
            (group / "metrics.jsonl.tmp").write_text("{}")
    monkeypatch.setattr(main, "dispatch", train_then_lose_the_folder)
    assert main.cli(["prog", *TINY, "--workdir", str(workdir)]) == 1
    error = capfd.readouterr().err.strip()
    assert error == (f"error: {workdir}/E1/all was removed while the job wrote into it; rerun the same command: "
                     "what is left of the workdir is resumed or started afresh")


def test_a_missing_file_outside_the_workdir_is_not_called_a_removed_workdir(tmp_path, monkeypatch):
    def read_a_missing_input(config, workdir_arg, mode):
        (tmp_path / "no_such_dir" / "x").read_text()
    monkeypatch.setattr(main, "dispatch", read_a_missing_input)
    with pytest.raises(FileNotFoundError):
        main.cli(["prog", *TINY, "--workdir", str(tmp_path / "run")])


def test_eval_creates_no_workdir(tmp_path):
    with workdir_lock(str(tmp_path / "b"), create=False):
        pass
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@needs_fashion_mnist
def test_a_second_run_on_a_busy_workdir_is_refused_and_the_first_finishes(tmp_path, capfd):
    workdir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "cifar_jax.main", *TINY, "--config.num_epochs=3",
                              "--workdir", str(workdir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    lock = workdir / LOCK_FILE
    while first.poll() is None and not (lock.exists() and lock.read_text()):
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    start = time.monotonic()
    assert main.cli(["prog", *TINY, "--config.num_epochs=3", "--workdir", str(workdir)]) == 1
    assert time.monotonic() - start < 5
    error = capfd.readouterr().err.strip()
    assert error.startswith("error: ") and f"in use by process {first.pid}" in error
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert json.loads((workdir / "results.json").read_text())["num_epochs"] == 3
    assert not lock.exists()


# --------------------------------------------------------------------------- dev run

# Study configs (configs/studies/) are lists of experiments, not training configs: their `:smoke`
# scale is their dev run, and tests/test_study.py validates every experiment at every scale.
CONFIG_FILES = sorted(str(p.relative_to(REPO)) for p in Path(REPO, "configs").rglob("*.py")
                      if p.name != "default.py" and p.parent.name != "studies" and "def get_config" in p.read_text())


def _config_variants(path: str) -> list[tuple[str, object]]:
    """(label, config) for a config file; fashion_mnist.py once per architecture."""
    spec = importlib.util.spec_from_file_location(f"dev_run_{Path(path).stem}", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    archs = getattr(module, "ARCHS", None) if path == "configs/fashion_mnist.py" else None
    return [(f"{path}:{a}", module.get_config(a)) for a in archs] if archs else [(path, module.get_config())]


def _check_trainable(config) -> None:
    """The static checks a training run makes before it claims its workdir, at the dev run's sizes."""
    image_shape = catalog.IMAGE_SHAPES[config.data.name]
    limit = config.data.train_limit
    if config.data.num_folds > 1:
        num_train = limit - -(-limit // config.data.num_folds)  # the largest held-out fold leaves the least
    else:
        num_train = limit - holdout._val_count(config.data.val_size, limit)
    assert num_train // config.batch_size >= 1
    validation.validate_config(config, image_shape, 10, num_train)


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_dev_run_makes_every_config_tiny_and_valid(path):
    for label, config in _config_variants(path):
        small = dev_run.apply_dev_run(config)
        assert small.num_epochs == 1 and small.num_seeds <= 2 and small.data.train_limit <= 1500, label
        assert small.data.test_limit <= 64 and small.eval_batch_size <= 64
        if "sweep" in small:
            for group in sweep.expand(small):
                _check_trainable(group.config)
        else:
            _check_trainable(small)
        assert dev_run.apply_dev_run(small).to_dict() == small.to_dict()  # idempotent: eval/resume agree


def test_dev_run_keeps_batches_in_every_fold_and_the_largest_swept_batch():
    from configs.sweeps import fashion_mnist_kfold, lenet_batch_size

    folds = dev_run.apply_dev_run(fashion_mnist_kfold.get_config())
    per_fold = min(len(t) for t, _ in holdout.kfold_indices(np.arange(folds.data.train_limit) % 10, 5, 0))
    assert per_fold // folds.batch_size >= dev_run.TRAIN_BATCHES
    assert dev_run.apply_dev_run(lenet_batch_size.get_config()).data.train_limit >= 10 * dev_run.TRAIN_BATCHES


@pytest.mark.slow
def test_dev_run_of_block_cnn_on_synthetic_cifar_finishes_in_two_minutes(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 700), ("test", 100)):
        np.savez(tmp_path / f"{split}.npz", image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 label=rng.integers(0, 10, n))
    start = time.monotonic()
    result = run_cli("--config", "configs/block_cnn.py", "--config.dev_run=True", f"--config.data.dir={tmp_path}",
                     "--workdir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - start < 120
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_epochs"] == 1 and results["num_seeds"] == 2


def test_error_line_joins_several_problems_and_stays_short():
    assert main.error_line("a=1 must be >= 2\nb='x' is unknown; use y") == "error: a=1 must be >= 2; b='x' is unknown; use y"
    long = main.error_line("x" * 500)
    assert len(long) == main.MAX_ERROR_CHARS and long.endswith("...")


def test_error_line_keeps_whole_problems_and_counts_the_rest():
    problems = [f"field_{i}={i} must be >= 100; raise it" for i in range(12)]
    line = main.error_line("\n".join(problems))
    assert len(line) <= main.MAX_ERROR_CHARS
    shown = [p for p in problems if p in line]
    assert shown == problems[: len(shown)] and 0 < len(shown) < len(problems)
    assert line.endswith(f"(+{len(problems) - len(shown)} more problems: fix these and rerun to see them)")
    long = main.error_line("y" * 500 + "\nsecond=1 is wrong")
    assert len(long) == main.MAX_ERROR_CHARS and long.endswith("... (+1 more problem: fix these and rerun to see them)")


def test_workdir_defaults_to_runs_and_the_config_name(capsys):
    config, workdir, mode, _ = main.parse(["prog", "--config", "configs/test.py", "--config.num_epochs=2"])
    assert (workdir, mode, config.num_epochs) == ("runs/test", "train", 2)
    assert capsys.readouterr().out.splitlines()[0].startswith("workdir: runs/test ")
    assert main.default_workdir("configs/fashion_mnist.py:resnet18") == "runs/fashion_mnist_resnet18"
    assert main.default_workdir("configs/studies/s000_lenet.py:cpu") == "runs/s000_lenet_cpu"
    assert main.parse(["prog", "--config", "configs/test.py", "--workdir", "elsewhere"])[1] == "elsewhere"
