"""Sweep specs -> groups, running groups with resume, and one tiny real sweep (compile count).

Everything but the last test replaces `train.train_and_evaluate` with `fake_train`, which writes
results.json / metrics.jsonl / config.json with numbers computed from the config, so running a
sweep takes milliseconds.
"""

import importlib
import itertools
import json
import os
import time

import jax
import ml_collections
import numpy as np
import pytest

from cifar_jax.experiments import report
from cifar_jax.core import runs
from cifar_jax.experiments import sweep
from cifar_jax.experiments import sweep_spec
from cifar_jax.job import train
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.cli import main
from cifar_jax.errors import CheckpointError, ConfigError, UsageError
from configs import default
from helpers import needs_fashion_mnist



def base_config(kind="grid", axes=(), constraints=(), **sweep_fields) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.num_seeds = 3
    config.sweep = ml_collections.ConfigDict(
        {"kind": kind, "axes": axes, "constraints": constraints, "metric": "val_accuracy", "alpha": 0.05,
         "labels": (), **sweep_fields})
    return config


def fake_accuracy(config, setting: dict, seed: int, fold: int | None = None) -> float:
    """Peaks at batch 8 and learning rate 0.01; the seed adds a fixed small offset."""
    lr = setting.get("learning_rate", config.optim.learning_rate)
    return 0.6 - 0.01 * abs(config.batch_size - 8) - 0.05 * abs(np.log10(lr) + 2) + 0.002 * seed


def fake_train(config, workdir, diverge=lambda setting, seed: False, epochs_done=None):
    """Writes what train.train_and_evaluate writes (the parts the sweep reads), without training."""
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.write_json_atomic(os.path.join(workdir, "config.json"), workdir_lib.config_to_dict(config))
    grid = dict(config.hparam_grid)
    names = sorted(grid)
    settings = [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]
    epochs = epochs_done or config.num_epochs
    runs, lines = [], []
    for s, setting in enumerate(settings):
        for seed in range(config.num_seeds):
            run = len(runs)
            final = fake_accuracy(config, setting, seed)
            diverged = diverge(setting, seed)
            for epoch in range(1, epochs + 1):
                acc = float("nan") if diverged else final - 0.05 * (config.num_epochs - epoch)
                lines.append(json.dumps({"epoch": epoch, "run": run, "seed_index": seed, "setting": s, **setting,
                                         "diverged": diverged, "val_accuracy": acc, "val_loss": 1 - acc,
                                         "train_loss": 1.0}))
            acc = float("nan") if diverged else final - 0.05 * (config.num_epochs - epochs)
            runs.append({"run": run, "seed_index": seed, "setting": s, **setting, "diverged": diverged,
                         "val_accuracy": acc, "val_loss": 1 - acc, "val_macro_f1": acc - 0.01})
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if epochs_done is None:
        workdir_lib.write_json_atomic(os.path.join(workdir, "results.json"),
                                      {"num_epochs": epochs, "settings": settings, "runs": runs})
    return {"runs": runs}


@pytest.fixture()
def no_report(monkeypatch):
    """Skips the plots and TensorBoard files where a test only looks at what was trained."""
    monkeypatch.setattr(report, "write_report", lambda workdir, **kwargs: {"markdown": "", "csv": ""})


class Recorder:
    """A train function that records which group directories it trained."""

    def __init__(self, fail_on=None, **kwargs):
        self.trained, self.fail_on, self.kwargs = [], fail_on, kwargs

    def __call__(self, config, workdir):
        name = os.path.basename(workdir)
        if name == self.fail_on:
            fake_train(config, workdir, epochs_done=1)  # interrupted: metrics but no results.json
            raise KeyboardInterrupt
        self.trained.append(name)
        return fake_train(config, workdir, **self.kwargs)


# ----------------------------------------------------------------------------- expansion

def test_grid_is_a_product_with_readable_group_names():
    config = base_config(axes=(("batch_size", (4, 8)), ("model.conv_features[0]", (6, 12))))
    groups = sweep.expand(config)
    assert [g.name for g in groups] == ["batch_size=4,conv_features0=6", "batch_size=4,conv_features0=12",
                                        "batch_size=8,conv_features0=6", "batch_size=8,conv_features0=12"]
    assert [(g.config.batch_size, g.config.model.conv_features) for g in groups] == [
        (4, (6, 16)), (4, (12, 16)), (8, (6, 16)), (8, (12, 16))]
    assert "sweep" not in groups[0].config and "sweep" in config  # the input is untouched
    assert groups[0].settings[0].label == "batch_size=4,conv_features[0]=6"


def test_no_axes_is_the_baseline_alone():
    (group,) = sweep.expand(base_config())
    assert group.name == "all" and [s.label for s in group.settings] == ["baseline"]


def test_zip_pairs_values_and_uses_labels():
    config = base_config("zip", axes=(("batch_size", (4, 8)), ("model.dense_features", ((120,), (64, 32)))),
                         labels=("wide", "deep"))
    groups = sweep.expand(config)
    assert [g.name for g in groups] == ["wide", "deep"]
    assert [(g.config.batch_size, g.config.model.dense_features) for g in groups] == [(4, (120,)), (8, (64, 32))]


def test_constraint_filters_the_grid():
    config = base_config(axes=(("model.conv_features[0]", (4, 8, 16)), ("model.conv_features[1]", (8, 16))),
                         constraints=("model.conv_features[0] <= model.conv_features[1]",))
    features = [g.config.model.conv_features for g in sweep.expand(config)]
    assert features == [(4, 8), (4, 16), (8, 8), (8, 16), (16, 16)]


def test_study_grid_has_16_settings_and_its_constraint_binds_when_widened():
    config = importlib.import_module("configs.sweeps.three_layer_grid").get_config()
    groups = sweep.expand(config)
    assert len(groups) == 16
    assert groups[0].name == groups[0].settings[0].label == "conv_features=32-64,kernel_size=3-5"
    axes = dict(config.sweep.axes)
    axes["model.conv_features[0]"] = (32, 64, 128)
    config.sweep.axes = tuple(axes.items())
    features = {g.config.model.conv_features for g in sweep.expand(config)}
    assert len(sweep.expand(config)) == 20 and (128, 64) not in features and (128, 128) in features


@pytest.mark.parametrize("text, expected", [
    ("batch_size * 2 == 256 and not model.padding == 'SAME'", True),
    ("len(model.conv_features) == 2 and max(model.kernel_size) < 7", True),
    ("model.conv_features[-1] in (16, 32) or optim.learning_rate > 1", True),
    ("-batch_size >= 0", False),
])
def test_constraint_evaluator(text, expected):
    config = default.get_config()
    tree = sweep_spec.parse_constraint(text)
    assert sweep_spec.evaluate(tree, lambda name: sweep_spec.get_field(config, name)) is expected


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "(lambda: 1)()", "[x for x in (1,)]",
                                  "batch_size.__class__", "open('f')", "batch_size if 1 else 2"])
def test_constraint_evaluator_refuses_anything_else(text):
    config = base_config(axes=(("batch_size", (4,)),), constraints=(text,))
    with pytest.raises(ConfigError, match="sweep.constraints|not a field"):
        sweep.expand(config)


def test_traced_axes_are_one_group_with_the_whole_hparam_grid():
    config = base_config(axes=(("optim.learning_rate", (1e-3, 1e-2, 1e-1)), ("optim.momentum", (0.0, 0.9)),
                               ("batch_size", (4, 8))))
    groups = sweep.expand(config)
    assert [g.name for g in groups] == ["batch_size=4", "batch_size=8"]  # one program per shape
    for group in groups:
        assert dict(group.config.hparam_grid) == {"learning_rate": (1e-3, 1e-2, 1e-1), "momentum": (0.0, 0.9)}
        assert len(group.settings) == 6
        assert runs.make_run_grid(group.config, 3).num_runs == 6 * config.num_seeds  # the trainer agrees


def test_traced_only_sweep_is_a_single_group():
    config = importlib.import_module("configs.sweeps.lenet_lr").get_config()
    (group,) = sweep.expand(config)
    assert group.name == "all" and dict(group.config.hparam_grid) == {"learning_rate": (1e-3, 3e-3, 1e-2)}
    assert [s.grid for s in group.settings] == [{"learning_rate": v} for v in (1e-3, 3e-3, 1e-2)]


def test_traced_values_that_are_not_a_product_become_separate_groups():
    config = base_config("zip", axes=(("optim.learning_rate", (1e-3, 1e-2)), ("optim.weight_decay", (0.0, 1e-4))))
    groups = sweep.expand(config)
    assert len(groups) == 2 and all(not dict(g.config.hparam_grid) for g in groups)
    assert [(g.config.optim.learning_rate, g.config.optim.weight_decay) for g in groups] == [(1e-3, 0.0), (1e-2, 1e-4)]


def test_dropout_axis_builds_dropout_layers_and_refuses_rate_one():
    config = importlib.import_module("configs.sweeps.dropout_rate").get_config()
    config.model.dropout_rate = 0.0  # even so, the group's model gets layers
    (group,) = sweep.expand(config)
    assert group.config.model.dropout_rate == 0.9 and len(group.config.hparam_grid.dropout_rate) == 10
    config.sweep.axes = (("model.dropout_rate", (0.5, 1.0)),)
    with pytest.raises(ConfigError, match="model.dropout_rate=1.0"):
        sweep.expand(config)


def test_traced_values_get_the_optimizer_checks():
    with pytest.raises(ConfigError, match="learning_rate"):
        sweep.expand(base_config(axes=(("optim.learning_rate", (1e-3, -1.0)),)))


def test_one_factor_expands_stage_by_stage_with_carried_over_values():
    config = base_config("one_factor", axes=(("batch_size", (4, 8, 16)), ("optim.learning_rate", (1e-3, 1e-2))))
    first = sweep.expand(config)
    assert [g.name for g in first] == ["1-batch_size/batch_size=4", "1-batch_size/batch_size=8",
                                       "1-batch_size/batch_size=16"]
    assert first[0].settings[0].values == {"batch_size": 4, "optim.learning_rate": 1e-3}
    both = sweep.expand(config, {"batch_size": 8})
    assert [g.name for g in both[3:]] == ["2-learning_rate"]
    assert both[3].config.batch_size == 8 and dict(both[3].config.hparam_grid) == {"learning_rate": (1e-3, 1e-2)}
    assert both[3].settings[1].values == {"batch_size": 8, "optim.learning_rate": 1e-2}


@pytest.mark.parametrize("fields, match", [
    ({"kind": "random"}, "sweep.kind"),
    ({"axes": (("optim.lr", (1,)),)}, "optim.lr"),
    ({"axes": (("batch_size", ()),)}, "batch_size has no values"),
    ({"axes": (("batch_size", (4, 4)),)}, "repeats"),
    ({"axes": (("batch_size", (4.5,)),)}, "batch_size=4.5"),
    ({"kind": "zip", "axes": (("batch_size", (4, 8)), ("num_epochs", (1,)))}, "equally long"),
    ({"metric": "accuracy"}, "sweep.metric"),
    ({"axes": (("batch_size", (4,)),), "constraints": ("batch_size > 8",)}, "leave no settings"),
    ({"axes": (("model.conv_features", ((4, 8),)), ("model.conv_features[0]", (4,)))}, "swept twice"),
])
def test_spec_errors_are_one_line_naming_the_field(fields, match):
    config = base_config(**{"axes": (("batch_size", (4,)),), **fields})
    with pytest.raises(ConfigError, match=match) as error:
        sweep.expand(config)
    assert "\n" not in str(error.value)


def test_hparam_grid_in_a_sweep_config_is_refused():
    config = base_config(axes=(("batch_size", (4,)),))
    config.hparam_grid.learning_rate = (1e-3,)
    with pytest.raises(ConfigError, match="hparam_grid"):
        sweep.expand(config)


def test_traced_fields_are_the_trainers():
    """A value a sweep writes into each traced field is the value the trainer reads for it."""
    config = default.get_config()
    for field, name in sweep_spec.TRACED_FIELDS.items():
        assert sweep_spec.get_field(config, field) == runs.traced_values(config)[name]
        changed = sweep_spec.with_values(config, {field: 0.125})
        assert runs.traced_values(changed)[name] == 0.125, field


@pytest.mark.parametrize("name, count", [("lenet_batch_size", 6), ("lenet_lr", 1), ("three_layer_grid", 16),
                                         ("fashion_mnist_lr", 1), ("fashion_mnist_kfold", 4), ("dropout_rate", 1)])
def test_study_sweep_configs_expand_and_pass_preflight(name, count):
    config = importlib.import_module(f"configs.sweeps.{name}").get_config()
    groups = sweep.expand(config)
    assert len(groups) == count
    sweep.preflight(groups)


def test_preflight_names_the_group_of_an_impossible_model():
    config = base_config(axes=(("model.kernel_size[0]", (5, 40)),))
    with pytest.raises(ConfigError, match="kernel_size0=40: model.kernel_size"):
        sweep.preflight(sweep.expand(config))


# ----------------------------------------------------------------------------- running

def test_run_sweep_writes_groups_plan_and_report(tmp_path):
    config = base_config(axes=(("batch_size", (4, 8)), ("optim.learning_rate", (1e-3, 1e-2))))
    recorder = Recorder()
    result = sweep.run_sweep(config, str(tmp_path), train_fn=recorder)
    assert recorder.trained == ["batch_size=4", "batch_size=8"]
    plan = json.loads((tmp_path / "sweep.json").read_text())
    assert plan["kind"] == "grid" and [g["name"] for g in plan["groups"]] == recorder.trained
    assert plan["groups"][0]["traced"] == {"optim.learning_rate": [1e-3, 1e-2]}
    assert {"results.csv", "results.md", "plots", "tensorboard"} <= set(os.listdir(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "batch_size=8,learning_rate=0.01 | 3 | 0 |" in md and "★" in md
    assert result["report"]["csv"] == str(tmp_path / "results.csv")


def test_mode_report_rebuilds_the_sweeps_own_report(tmp_path):
    """--mode=report on a sweep's workdir writes the results.md and results.csv the sweep wrote."""
    config = base_config(axes=(("batch_size", (4, 8)), ("optim.learning_rate", (1e-3, 1e-2))))
    sweep.run_sweep(config, str(tmp_path), train_fn=Recorder())
    written = {name: (tmp_path / name).read_text() for name in ("results.md", "results.csv")}
    for name in written:
        (tmp_path / name).unlink()
    paths = main.dispatch(config, str(tmp_path), "report")
    assert paths["markdown"] == str(tmp_path / "results.md")
    assert {name: (tmp_path / name).read_text() for name in written} == written


def test_mode_report_without_a_sweep_says_what_to_run(tmp_path):
    with pytest.raises(CheckpointError, match="holds no sweep .no sweep.json.; run --mode=sweep"):
        main.dispatch(base_config(axes=(("batch_size", (4,)),)), str(tmp_path), "report")
    with pytest.raises(UsageError, match="--mode=report rebuilds a study's report.md or a sweep's results.md"):
        main.dispatch(default.get_config(), str(tmp_path), "report")


def test_one_factor_run_chooses_the_best_value_then_moves_on(tmp_path):
    config = base_config("one_factor", axes=(("batch_size", (4, 8, 16)), ("optim.learning_rate", (1e-3, 1e-2))))
    recorder = Recorder()
    result = sweep.run_sweep(config, str(tmp_path), train_fn=recorder)
    assert result["chosen"] == {"batch_size": 8, "optim.learning_rate": 1e-2}
    assert recorder.trained == ["batch_size=4", "batch_size=8", "batch_size=16", "2-learning_rate"]
    stored = json.loads((tmp_path / "2-learning_rate" / "config.json").read_text())
    assert stored["batch_size"] == 8  # stage 2 ran with stage 1's best value
    assert json.loads((tmp_path / "sweep.json").read_text())["chosen"] == {"batch_size": 8,
                                                                          "optim.learning_rate": 0.01}
    md = (tmp_path / "results.md").read_text()
    assert "Chosen: `batch_size`=8" in md and "Carried over: `batch_size`=8" in md


def test_one_factor_choice_minimizes_losses_and_skips_diverged_runs(tmp_path, no_report):
    config = base_config("one_factor", axes=(("optim.learning_rate", (1e-3, 1e-2, 1e-1)),), metric="val_loss")
    diverge = lambda setting, seed: setting["learning_rate"] == 1e-2 and seed == 0
    result = sweep.run_sweep(config, str(tmp_path), train_fn=Recorder(diverge=diverge))
    assert result["chosen"] == {"optim.learning_rate": 1e-2}  # lowest loss, computed without the NaN run


def test_rerun_skips_finished_groups_and_resumes_the_interrupted_one(tmp_path, no_report):
    config = base_config(axes=(("batch_size", (4, 8, 16)),))
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config, str(tmp_path), train_fn=Recorder(fail_on="batch_size=8"))
    assert (tmp_path / "batch_size=4" / "results.json").exists()
    assert not (tmp_path / "batch_size=8" / "results.json").exists()
    recorder = Recorder()
    sweep.run_sweep(config, str(tmp_path), train_fn=recorder)
    assert recorder.trained == ["batch_size=8", "batch_size=16"]  # batch_size=4 was not touched
    again = Recorder()
    sweep.run_sweep(config, str(tmp_path), train_fn=again)
    assert again.trained == []


def test_more_epochs_resume_a_finished_group(tmp_path, no_report):
    config = base_config(axes=(("batch_size", (4,)),))
    sweep.run_sweep(config, str(tmp_path), train_fn=Recorder())
    config.num_epochs = 3
    recorder = Recorder()
    sweep.run_sweep(config, str(tmp_path), train_fn=recorder)
    assert recorder.trained == ["batch_size=4"]


def test_a_finished_group_of_another_config_is_refused(tmp_path, no_report):
    config = base_config(axes=(("batch_size", (4,)),))
    sweep.run_sweep(config, str(tmp_path), train_fn=Recorder())
    config.optim.momentum = 0.5
    with pytest.raises(CheckpointError, match="optim.momentum"):
        sweep.run_sweep(config, str(tmp_path), train_fn=Recorder())


def test_run_sweep_uses_the_training_core_by_default(tmp_path, no_report, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(train, "train_and_evaluate", recorder)
    sweep.run_sweep(base_config(axes=(("batch_size", (4,)),)), str(tmp_path))
    assert recorder.trained == ["batch_size=4"]


# ----------------------------------------------------------------------------- one real sweep

@needs_fashion_mnist
def test_real_traced_sweep_compiles_the_training_step_once(tmp_path):
    """Two learning rates x two seeds on real Fashion-MNIST: one group, one `train_steps` program."""
    config = importlib.import_module("configs.test").get_config()
    config.data.train_limit, config.data.test_limit, config.data.val_size = 256, 100, 100.0
    config.model.conv_features, config.model.kernel_size, config.model.strides = (4,), (3,), (1,)
    config.model.dense_features = (8,)
    config.batch_size, config.eval_batch_size = 64, 100
    config.execution.steps_per_call = 1  # a single chunk length: one compile per program
    config.sweep = ml_collections.ConfigDict({"kind": "grid", "axes": (("optim.learning_rate", (0.01, 0.1)),)})
    lowered = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and "train_steps" in kwargs.get("fun_name", ""):
            lowered.append(kwargs["fun_name"])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        sweep.run_sweep(config, str(tmp_path))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(lowered) == 1, lowered
    results = json.loads((tmp_path / "all" / "results.json").read_text())
    assert {run["learning_rate"] for run in results["runs"]} == {0.01, 0.1} and len(results["runs"]) == 4
    csv_text = (tmp_path / "results.csv").read_text()
    assert "learning_rate=0.01" in csv_text and "learning_rate=0.1" in csv_text
    assert (tmp_path / "plots" / "sweep_optim.learning_rate.png").stat().st_size > 0


# ----------------------------------------------------------------------------- several workers


def test_worker_share_reads_the_config_then_slurm(monkeypatch):
    config = base_config(axes=(("batch_size", (4, 8)),), worker_index=-1, num_workers=0)
    assert sweep.worker_share(config) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")  # --array=5-8
    assert sweep.worker_share(config) == (2, 4)
    config.sweep.worker_index, config.sweep.num_workers = 1, 2
    assert sweep.worker_share(config) == (1, 2)
    config.sweep.worker_index = 2
    with pytest.raises(ConfigError, match="worker_index"):
        sweep.worker_share(config)


def test_two_workers_train_disjoint_groups_and_the_last_writes_the_report(tmp_path):
    """Two workers started together on one workdir (threads here: the group claims are flocks,
    which conflict between open files of one process as between processes)."""
    import threading

    axes = (("batch_size", (2, 4, 8, 16)),)
    trained: dict[int, list[str]] = {0: [], 1: []}
    gate = threading.Barrier(2)

    def worker(index: int) -> None:
        def train_fn(config, group_dir):
            trained[index].append(os.path.basename(group_dir))
            time.sleep(0.3)  # long enough that the other worker meets the claim
            fake_train(config, group_dir)
        gate.wait()
        sweep.run_sweep(base_config(axes=axes, worker_index=index, num_workers=2), str(tmp_path / "shared"),
                        train_fn=train_fn)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not set(trained[0]) & set(trained[1])  # never the same group twice
    assert sorted(trained[0] + trained[1]) == sorted(f"batch_size={b}" for b in (2, 4, 8, 16))
    assert trained[0] and trained[1]  # both worked
    sweep.run_sweep(base_config(axes=axes), str(tmp_path / "alone"), train_fn=fake_train)
    assert (tmp_path / "shared" / "results.md").read_text() == (tmp_path / "alone" / "results.md").read_text()


def test_a_dead_workers_group_is_finished_by_the_next_run(tmp_path):
    axes = (("batch_size", (4, 8)),)
    with pytest.raises(KeyboardInterrupt):  # worker 0 trains batch 4, then dies inside batch 8 (worker 1's share)
        sweep.run_sweep(base_config(axes=axes, worker_index=0, num_workers=2), str(tmp_path),
                        train_fn=Recorder(fail_on="batch_size=8"))
    recorder = Recorder()
    result = sweep.run_sweep(base_config(axes=axes, worker_index=1, num_workers=2), str(tmp_path), train_fn=recorder)
    assert recorder.trained == ["batch_size=8"]  # the unfinished group only
    assert result["report"] is not None
