"""Studies: a miniature study trained for real through `study.run_study` (report numbers against
results.json, resume), verdict rules, and every configs/studies/*.py at every scale validated
without training."""

import glob
import importlib.util
import json
import math
import os
import re

import ml_collections
import numpy as np
import pytest
import scipy.stats

from cifar_jax.experiments import analysis
from cifar_jax.experiments import dsl
from cifar_jax.experiments import report
from cifar_jax.experiments import study
from cifar_jax.experiments import study_report
from cifar_jax.experiments import study_tables
from cifar_jax.experiments import verdicts
from cifar_jax.job import train
from cifar_jax.errors import ConfigError
from cifar_jax.models import block, common
from tests.helpers import REPO, needs_fashion_mnist, run_cli, tiny_config

STUDY_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "studies", "s*.py")))


def load_study(path: str, scale: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(scale)


def mini_study() -> ml_collections.ConfigDict:
    """Two experiments (a traced lr pair in one program; one setting of another width), 1 epoch,
    2 seeds, 600 Fashion-MNIST images, a 4-channel conv net."""
    config = dsl.study_config(name="mini", title="miniature", scale="smoke", config_path="tests/test_study.py",
                              source="this test", num_seeds=2, data_dir="/usr/share/datasets/fashion-mnist",
                              train_limit=600, val_size=200, test_limit=200, execution=tiny_config().execution)
    base = tiny_config(**{"model.dropout_rate": 0.0, "log_step_metrics": True})
    config.experiments.A_lr = dsl.experiment(
        base, ids=("A",), title="learning rate", axes=(("optim.learning_rate", (0.01, 0.05)),),
        step_curves=("dead_relu_fraction", "grad_norm/*"),
        reported=(("learning_rate=0.05", 80.0, "test, epoch 1", "test_accuracy"),
                  ("learning_rate=0.01", 9.0, "test, epoch 1", "test_accuracy")),
        torch_images_per_s=1000.0, columns=("dead_relu_fraction", "grad_norm/*"), curves=("train_loss",))
    config.experiments.B_width = dsl.experiment(
        base, ids=("B",), title="width", kind="zip", axes=(("model.dense_features", ((8,),)),), labels=("narrow",),
        reported=(("narrow", 0.5, "train loss, epoch 1", "train_loss"),), analysis="output_correlation")
    config.experiments.C_full = dsl.experiment(base, ids=("C",), title="big", needs_full_scale=True)
    config.claims.C1_01 = dsl.claim("lr 0.05 beats 0.01", "A_lr:learning_rate=0.05", "A_lr:learning_rate=0.01",
                                    expect="greater")
    config.claims.C1_02 = dsl.claim("the narrow net is as good", "B_width:narrow", "A_lr:learning_rate=0.05",
                                    expect="equal", margin=5.0)
    config.claims.C1_03 = dsl.claim("big is better", "C_full:baseline", "A_lr:learning_rate=0.05",
                                    expect="greater")
    return config


def table_cells(markdown: str, setting: str) -> list[list[str]]:
    """The cells of an experiment table's rows for `setting`."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith(f"| {setting} |")]


def ours(cell: str) -> tuple[float, float, int]:
    """'61.20 ± 0.85 (5) — title' -> (61.2, 0.85, 5)."""
    mean, half, n = re.match(r"([-\d.–]+) ± ([-\d.–]+) \((\d+)\)", cell).groups()
    number = lambda text: math.nan if text == "–" else float(text)
    return number(mean), number(half), int(n)


@needs_fashion_mnist
def test_mini_study_report_matches_results_and_resumes(tmp_path):
    config = mini_study()
    calls = []

    def counting_train(cfg, workdir):
        calls.append(os.path.relpath(workdir, tmp_path))
        return train.train_and_evaluate(cfg, workdir)

    first = study.run_study(config, str(tmp_path), train_fn=counting_train)
    assert first["trained"] == ["A_lr", "B_width"] and first["skipped"] == []
    assert calls == ["A_lr/all", "B_width/narrow"]  # the traced lr pair is one program
    markdown = (tmp_path / "report.md").read_text()

    with open(tmp_path / "A_lr" / "all" / "results.json") as f:
        results = json.load(f)
    for s, label in enumerate(("learning_rate=0.01", "learning_rate=0.05")):
        runs = [r for r in results["runs"] if r["setting"] == s and not verdicts.is_failed(r)]
        (cells,) = table_cells(markdown, label)
        mean, half, n = ours(cells[2])
        # Fashion-MNIST has a test split: it is read at each run's val-selected epoch (here the only one)
        assert "test acc at val-selected epoch" in cells[2]
        assert n == len(runs)
        if runs:
            values = 100 * np.array([r["test_accuracy"] for r in runs])
            assert mean == pytest.approx(values.mean(), abs=0.006)
        if len(runs) > 1:  # the CI's half-width: Student-t over the seeds
            expected = scipy.stats.t.ppf(0.975, len(runs) - 1) * values.std(ddof=1) / np.sqrt(len(runs))
            assert half == pytest.approx(expected, abs=0.006)
    narrow, _correlations = table_cells(markdown, "narrow")  # the experiment's row, then its analysis row
    with open(tmp_path / "B_width" / "narrow" / "results.json") as f:
        b_losses = [r["train_loss"] for r in json.load(f)["runs"] if not verdicts.is_failed(r)]
    assert ours(narrow[2])[2] == len(b_losses)
    if b_losses:
        assert ours(narrow[2])[0] == pytest.approx(np.mean(b_losses), abs=0.006)
    assert "the study's run failed" in table_cells(markdown, "learning_rate=0.01")[0][4]
    assert "needs :full scale" in markdown and "C1.3" in markdown
    assert "## Protocol" in markdown and "PyTorch" in markdown and "cpu" in markdown.lower()
    # 4 runs x 1 epoch x 400 training images (600 - 200 validation) at PyTorch's 1,000 images/s: 1.6 s
    (protocol,) = [line for line in markdown.splitlines()
                   if line.startswith("| A_lr | 400 | read at the val-selected epoch | 1 | 4 |")]
    assert protocol.endswith("| 1,000 | 00:00:01 |")
    assert (tmp_path / "plots" / "A_lr_curves.png").exists()
    assert (tmp_path / "plots" / "A_lr_train_loss_curves.png").exists()
    for name in ("dead_relu_fraction", "grad_norm"):  # step curves, from the runs' steps.jsonl
        assert f"(plots/A_lr_{name}_steps.png)" in markdown and (tmp_path / "plots" / f"A_lr_{name}_steps.png").exists()
    assert "ours: dead ReLU units" in markdown and "‖grad‖ stages/0/conv" in markdown
    assert "| narrow | " in markdown.split("Correlations of the output units")[1]

    # A killed study: B's results are gone (as if killed before it finished); only B trains again.
    os.remove(tmp_path / "B_width" / "narrow" / "results.json")
    calls.clear()
    second = study.run_study(config, str(tmp_path), train_fn=counting_train)
    assert second["skipped"] == ["A_lr"] and second["trained"] == ["B_width"]
    assert calls == ["B_width/narrow"]
    assert len(json.loads((tmp_path / "study.json").read_text())["sessions"]) == 2
    assert "at commit" in (tmp_path / "report.md").read_text().split("\n")[2]  # the header line names the commit


def _fold_setting(label: str, accuracy: dict[tuple[int, int], float]) -> "report.Setting":
    runs = [{"fold": f, "seed_index": s, "val_accuracy": a} for (f, s), a in accuracy.items()]
    return report.Setting(label=label, group=label, stage=0, values={}, runs=runs, curves={})


def test_leak_table_pairs_each_seed_over_folds():
    """The leak is the per-seed mean over folds of leaky minus correct, with a Student-t CI over seeds."""
    rng = np.random.default_rng(0)
    correct = {(f, s): 0.8 + 0.01 * rng.normal() for f in range(3) for s in range(4)}
    leaky = {(f, s): correct[(f, s)] + 0.05 * f + 0.002 * s for f in range(3) for s in range(4)}
    lines = study_tables.leak_table([_fold_setting(f"fold_{f + 1}", {k: v for k, v in leaky.items() if k[0] == f})
                              for f in range(3)], [_fold_setting("baseline", correct)], "K")
    (leak,) = table_cells("\n".join(lines), "**leak** (leaky − correct, paired by seed)")
    per_seed = [100 * np.mean([leaky[(f, s)] - correct[(f, s)] for f in range(3)]) for s in range(4)]
    mean, half, n = ours(leak[-1])
    assert n == 4 and mean == pytest.approx(np.mean(per_seed), abs=0.006)
    assert half == pytest.approx(scipy.stats.t.ppf(0.975, 3) * np.std(per_seed, ddof=1) / 2, abs=0.006)
    assert [ours(c)[0] for c in leak[1:4]] == pytest.approx([0.3, 5.3, 10.3], abs=0.006)  # fold f: 5f + 0.3


@needs_fashion_mnist
def test_a_leaky_fold_chain_trains_fold_after_fold_and_reports_the_leak(tmp_path):
    """Study 002's leaky k-fold as a study: one job per fold, fold k starting from fold k-1's
    directory (init_from), reported against the same folds trained fresh."""
    config = dsl.study_config(name="leak", title="leak", scale="smoke", config_path="tests/test_study.py",
                              source="this test", num_seeds=2, data_dir="/usr/share/datasets/fashion-mnist",
                              train_limit=600, val_size=0, execution=tiny_config().execution)
    base = tiny_config(**{"model.dropout_rate": 0.0, "data.num_folds": 3})
    config.experiments.K = dsl.experiment(base, ids=("K",), title="fresh folds")
    config.experiments.L = dsl.experiment(
        base, ids=("L",), title="leaky folds", kind="zip", fold_reference="K",
        axes=(("data.folds", ((0,), (1,), (2,))), ("init_from", ("", "../fold_1", "../fold_2"))),
        labels=("fold_1", "fold_2", "fold_3"))
    calls = []
    study.run_study(config, str(tmp_path), train_fn=lambda cfg, workdir: calls.append(
        (os.path.relpath(workdir, tmp_path), cfg.init_from)) or train.train_and_evaluate(cfg, workdir))
    assert calls == [("K/all", ""), ("L/fold_1", ""), ("L/fold_2", "../fold_1"), ("L/fold_3", "../fold_2")]
    with open(tmp_path / "L" / "fold_3" / "results.json") as f:
        assert {run["fold"] for run in json.load(f)["runs"]} == {2}
    markdown = (tmp_path / "report.md").read_text()
    (leak,) = table_cells(markdown, "**leak** (leaky − correct, paired by seed)")
    assert len(leak) == 5 and ours(leak[-1])[2] == 2  # 3 folds + the mean over folds, 2 seeds
    assert table_cells(markdown, "leaky: fold k starts from fold k−1's trained weights")
    assert ours(leak[1])[0] == pytest.approx(0.0, abs=0.006)  # fold 1 is fresh in both: the same runs
    # the chain's chart: folds from 1 beside the fresh folds, not an axis chart of data.folds / init_from
    assert sorted(p.name for p in (tmp_path / "plots").glob("L_*")) == ["L_curves.png", "L_folds.png"]
    assert "![L](plots/L_folds.png)" in markdown


def test_report_mode_on_an_unstarted_study_lists_every_experiment(tmp_path):
    """--mode=report is wired in main.py and renders a study that has not trained anything yet."""
    result = run_cli("--mode=report", "--config", "configs/studies/s004_cnn_mlp.py:smoke", "--workdir", str(tmp_path),
                     "--config.study.evidence_dir=")  # no committed evidence: nothing trained anywhere
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report.md").read_text()
    for key in ("E4_1_cnn", "E4_2_mlp", "E4_7_batch", "E4_8_dropout", "F4_5_dropout_type"):
        assert f"`{key}/`" in markdown
    assert "No finished runs yet." in markdown and "element vs channel (Dropout2d)" in markdown


@needs_fashion_mnist
def test_gate_analysis_of_a_block_cnn_experiment(tmp_path):
    """The learned branch weights per block (study 003's unmeasured claim) land in the report."""
    config = dsl.study_config(name="gates", title="gates", scale="smoke", config_path="tests/test_study.py",
                              source="this test", num_seeds=2, data_dir="/usr/share/datasets/fashion-mnist",
                              train_limit=400, val_size=100, test_limit=100, execution=tiny_config().execution)
    base = tiny_config(**{"model.name": "block_cnn", "model.dropout_rate": 0.0, "model.dropout_placement": "none"})
    base.model.update({name: common.CNN_FIELD_DEFAULTS[name] for name in block.IGNORED})  # unread by block_cnn
    base.model.block_channels, base.model.num_branches, base.model.gate = (4, 8), 3, "softmax"
    base.model.classifier_features = (16,)
    config.experiments.G = dsl.experiment(base, ids=("G",), title="gates", analysis="gates")
    study.run_study(config, str(tmp_path))
    markdown = (tmp_path / "report.md").read_text()
    assert "| setting | block | a_1 | a_2 | a_3 |" in markdown
    rows = [line for line in markdown.split("| setting | block |")[1].splitlines() if line.startswith("| baseline |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]  # one row per block
    for row in rows:  # softmax weights: the three means sum to 1
        means = [float(cell.split("±")[0]) for cell in row.strip("|").split("|")[2:]]
        assert len(means) == 3 and sum(means) == pytest.approx(1.0, abs=2e-3)
    assert (tmp_path / "analysis" / "G" / "all.json").exists()  # cached: --mode=report does not recompute


def test_correlation_statistics_with_and_without_the_diagonal():
    outputs = np.random.default_rng(0).normal(size=(500, 10))
    stats = analysis.correlation_stats(outputs)
    # independent units: off-diagonal correlations ~0, and the diagonal's ones lift the mean to ~1/10
    assert abs(stats["off_diagonal_mean"]) < 0.01 and stats["mean"] == pytest.approx(0.1, abs=0.01)


def test_failure_and_row_rules():
    assert verdicts.is_failed({"train_loss": math.log(10) + 0.01})
    assert verdicts.is_failed({"train_loss": float("nan")})
    assert verdicts.is_failed({"train_loss": 0.5, "diverged": True})
    assert not verdicts.is_failed({"train_loss": 1.2})
    assert not verdicts.is_failed({"train_loss": 2.28, "val_accuracy": 0.25})  # slow, not failed
    assert verdicts.is_failed({"train_loss": 14.0, "val_accuracy": 0.05})  # blown up but finite
    assert verdicts.is_failed({"train_loss": 2.2, "val_accuracy": 0.1148})  # near chance (000 E0.8 bs 1)
    assert not verdicts.is_failed({"train_loss": 2.2, "val_accuracy": 0.13})
    summ = {"mean": 60.0, "ci_low": 59.0, "ci_high": 61.0, "pi": 2.5, "n": 5, "collapsed": 0, "runs": 5}
    assert verdicts.row_verdict(62.0, "val_accuracy", summ) == "within our 95% PI"  # outside the CI, inside the PI
    assert verdicts.row_verdict(64.0, "val_accuracy", summ) == "outside our 95% PI (study higher)"
    assert verdicts.row_verdict(9.0, "val_accuracy", summ).startswith("the study's run failed")


def _claims_config(scale: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({"study": {"scale": scale}, "claims": {}})
    config.claims.C_01 = dsl.claim("a beats b", "E:a", "E:b", expect="greater")
    config.claims.C_02 = dsl.claim("a equals c", "E:a", "E:c", expect="equal", margin=5.0)
    config.claims.C_03 = dsl.claim("b beats a", "E:b", "E:a", expect="greater")
    config.claims.C_04 = dsl.claim("a is best", "E:a", expect="best", others=("E:b", "E:c"))
    config.claims.C_05 = dsl.claim("the gap grows", "E:a", "E:b", c="E:c", d="E:b", expect="greater")
    config.claims.C_06 = dsl.claim("f fails", "E:f", "E:a", expect="collapsed")
    return config


def _setting(label: str, values: list[float]) -> "report.Setting":
    runs = [{"val_accuracy": v, "train_loss": 1.0} for v in values]
    setting = report.Setting(label=label, group=label, stage=0, values={}, runs=runs, curves={})
    verdicts.annotate(setting)
    return setting


@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_claim_verdicts_by_scale(scale):
    loaded = {"E": [_setting("a", [0.60, 0.61, 0.62]), _setting("b", [0.50, 0.51, 0.52]),
                    _setting("c", [0.600, 0.605, 0.61]), _setting("f", [0.10, 0.10, 0.30])]}
    ctx = verdicts.Context(loaded=loaded, skipped={}, scale=scale, horizon={"E": "2 epochs × 8,000 images"})
    claims = {c.key: c for c in verdicts.judge_claims(_claims_config(scale), ctx)}
    full = scale == "full"
    assert claims["C_01"].level == ("supported" if full else "consistent")
    diff = claims["C_01"].diff
    assert diff["diff"] == pytest.approx(10.0) and diff["low"] < 10 < diff["high"] and diff["mde"] > 0
    assert claims["C_02"].level == ("supported" if full else "consistent") and math.isnan(claims["C_02"].p_holm)
    assert claims["C_03"].level == ("refuted" if full else "not reproduced at this scale")
    assert full or "2 epochs × 8,000 images" in claims["C_03"].verdict
    assert claims["C_04"].level == "inconclusive"  # a vs c: no significant difference
    assert claims["C_05"].diff["diff"] == pytest.approx(10.0 - 9.5)  # (a - b) - (c - b)
    assert claims["C_06"].level == "partly supported" and claims["C_06"].evidence.startswith("2/3 runs failed")
    assert verdicts.verdict_counts(list(claims.values()), scale).startswith(f"Claims at `:{scale}`: ")


def test_a_claim_across_experiments_of_two_scales_is_not_tested():
    """A :cpu report carrying one experiment's :cheap_full runs never compares them with another
    experiment's :cpu runs: the difference would be one of trainings, not of settings."""
    config = ml_collections.ConfigDict({"study": {"scale": "cpu"}, "claims": {}})
    config.claims.C_01 = dsl.claim("a beats b", "E:a", "F:b", expect="greater")
    config.claims.C_02 = dsl.claim("a beats c", "E:a", "E:c", expect="greater")
    loaded = {"E": [_setting("a", [0.60, 0.61, 0.62]), _setting("c", [0.50, 0.51, 0.52])],
              "F": [_setting("b", [0.50, 0.51, 0.52])]}
    ctx = verdicts.Context(loaded=loaded, skipped={}, scale="cpu", horizon={}, scales={"E": "cheap_full"})
    claims = {c.key: c for c in verdicts.judge_claims(config, ctx)}
    assert claims["C_01"].level == "not tested"
    assert claims["C_01"].detail == "here: its experiments ran at different scales (E at :cheap_full, F at :cpu)"
    assert claims["C_02"].level == "supported"  # both sides at :cheap_full, a full scale


def test_claim_checks():
    config = mini_study()
    config.claims.C1_02.margin = 0.0
    with pytest.raises(ConfigError, match="margin > 0"):
        study.validate(config)
    config = mini_study()
    config.claims.C1_04 = dsl.claim("best", "A_lr:learning_rate=0.05", expect="best", others=("A_lr:nope",))
    with pytest.raises(ConfigError, match="names no setting"):
        study.validate(config)


def test_step_curves_need_step_metrics():
    config = mini_study()
    config.experiments.A_lr.config.log_step_metrics = False
    with pytest.raises(ConfigError, match="step_curves need log_step_metrics"):
        study.validate(config)


def test_a_typo_in_a_claim_fails_before_training():
    config = mini_study()
    config.claims.C1_01.b = "A_lr:learning_rate=0.5"
    with pytest.raises(ConfigError, match="names no setting"):
        study.validate(config)


def test_a_bad_setting_in_a_later_experiment_fails_before_training():
    config = mini_study()
    config.experiments.B_width.config.optim.learning_rate = -1.0
    with pytest.raises(ConfigError, match="experiment B_width: group narrow: .*learning_rate"):
        study.validate(config)


def test_top_level_overrides_reach_every_experiment():
    config = mini_study()
    config.num_seeds = 7
    config.data.train_limit = 123
    config.data.dir = "/elsewhere"
    config.execution.num_processes = 4
    for exp in study.experiments(config):
        assert (exp.config.num_seeds, exp.config.data.train_limit, exp.config.data.dir) == (7, 123, "/elsewhere")
        assert exp.config.execution.num_processes == 4


@pytest.mark.parametrize("scale", dsl.SCALES)
@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=os.path.basename)
def test_study_configs_build_and_validate(path, scale):
    config = load_study(path, scale)
    exps = study.validate(config)  # sweep.expand + preflight + reported/claim labels
    assert config.study.scale == scale and exps
    if scale == "smoke":
        assert config.num_seeds == 2 and all(e.config.num_epochs <= 3 for e in exps)
        assert 0 < config.data.train_limit <= 2000
    for exp in exps:
        assert exp.config.num_seeds == config.num_seeds


def test_the_header_names_the_commits_of_each_scale_apart():
    evidence = {"E1": {"scale": "cpu", "commits": ["aaa", "bbb"]}, "E2": {"scale": "cpu", "commits": ["aaa"]},
                "E3": {"scale": "cheap_full", "commits": ["ccc"]}}
    assert study_report.commits_line("cpu", evidence) == "aaa, bbb (evidence at `:cheap_full`: ccc)"
    assert study_report.commits_line("full", {"E3": evidence["E3"]}) == "– (evidence at `:cheap_full`: ccc)"


def test_what_holds_says_a_verdict_stands_at_any_scale_only_in_a_reduced_report():
    from types import SimpleNamespace
    leak = SimpleNamespace(key="C2_6d", text="the folds are real", level="refuted", evidence="difference +5.44",
                           detail="", any_scale=True, full_scale=False)
    assert study_report.what_holds([leak], "cpu")[2].endswith("(difference +5.44); the test holds at any scale.")
    assert study_report.what_holds([leak], "full")[2].endswith("(difference +5.44).")
    carried = SimpleNamespace(**{**vars(leak), "full_scale": True})  # its runs: a :cpu report's :cheap_full ones
    assert study_report.what_holds([carried], "cpu")[2].endswith(
        "(difference +5.44); judged on runs at the study's scale.")
