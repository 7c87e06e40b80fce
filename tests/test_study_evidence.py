"""Study configs load without the ML stack; the statistics module against textbook formulas; a
study report rebuilt from its evidence files alone gives the same text (a miniature study here,
and every committed docs/studies/NNN.md with its committed evidence)."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from cifar_jax.experiments import evidence
from cifar_jax.experiments import plots
from cifar_jax.experiments import stats
from cifar_jax.experiments import study
from cifar_jax.experiments import study_report
from cifar_jax.job import workdir as workdir_lib
from tests.helpers import REPO, needs_fashion_mnist
from tests.test_study import load_study, mini_study

HEAVY = ("jax", "flax", "optax", "orbax", "tensorflow")


def test_loading_every_config_imports_no_ml_stack():
    script = (
        "import glob, importlib, sys\n"
        "for path in sorted(glob.glob('configs/**/*.py', recursive=True)):\n"
        "    module = importlib.import_module(path[:-3].replace('/', '.'))\n"
        "    if hasattr(module, 'get_config') and 'studies' in path:\n"
        "        module.get_config('cpu')\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_difference_ci_detectable_effect_tost_and_prediction_interval():
    a, b = [61.0, 62.5, 60.2, 63.1, 61.7], [58.0, 59.4, 57.1, 60.2]
    d = stats.difference(stats.welch_parts(a, b))
    welch = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert d["p"] == pytest.approx(welch.pvalue, rel=1e-9)
    ci = welch.confidence_interval(0.95)
    assert (d["low"], d["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    se = (d["high"] - d["diff"]) / scipy.stats.t.ppf(0.975, d["df"])
    assert d["mde"] == pytest.approx((scipy.stats.t.ppf(0.975, d["df"]) + scipy.stats.t.ppf(0.8, d["df"])) * se)
    parts = stats.welch_parts(a, b)
    assert stats.tost_p(parts, 10.0) < 0.05 < stats.tost_p(parts, 1.0)  # equivalent within 10, not within 1
    n, s = len(a), np.std(a, ddof=1)
    assert stats.prediction_half_width(a) == pytest.approx(scipy.stats.t.ppf(0.975, n - 1) * s * np.sqrt(1 + 1 / n))
    assert stats.fisher_greater(3, 3, 0, 3) == pytest.approx(0.05)


def _rebuilt(config, evidence_dir: str, tmp: str) -> str:
    """The published text of a report rebuilt into an empty workdir from `evidence_dir` alone."""
    config.study.evidence_dir = evidence_dir
    path = study.write_study_report(config, tmp)
    with open(path) as f:
        return study_report.published_text(f.read(), config.study.name)


@needs_fashion_mnist
def test_a_report_rebuilt_from_its_evidence_alone_is_the_same(tmp_path):
    config = mini_study()
    config.study.evidence_dir = ""
    study.run_study(config, str(tmp_path / "work"))
    assert sorted(os.listdir(tmp_path / "work" / "evidence")) == ["A_lr.json", "B_width.json"]
    assert max(os.path.getsize(p) for p in glob.glob(str(tmp_path / "work" / "evidence" / "*"))) < 50_000
    first = evidence.read(str(tmp_path / "work" / "evidence"), "A_lr")
    assert first["commits"] and first["hardware"]  # written before the study's first session was saved
    docs = tmp_path / "docs"
    (docs / "mini").mkdir(parents=True)
    (docs / "mini" / "an_older_report_plot.png").write_bytes(b"png")
    published = study_report.publish(config, str(tmp_path / "work"), str(docs))
    assert not (docs / "mini" / "an_older_report_plot.png").exists()  # a replaced report's plot goes with it
    assert (docs / "mini" / "A_lr_curves.png").exists()
    evidence_dir = str(docs / "mini" / "evidence")
    config.study.evidence_dir = evidence_dir  # the published report names it: rebuild the work copy with it
    first = _rebuilt(config, evidence_dir, str(tmp_path / "work"))
    second = _rebuilt(mini_study(), evidence_dir, str(tmp_path / "fresh"))  # no workdir: evidence only
    assert first == second and "## What holds" in second
    assert (tmp_path / "fresh" / "plots" / "A_lr_curves.png").exists()
    assert open(published).read().count("](mini/") > 0
    # committed evidence that matches the config: a second study trains nothing
    calls = []
    again = study.run_study(config, str(tmp_path / "other"), train_fn=lambda c, w: calls.append(w))
    assert calls == [] and again["skipped"] == ["A_lr", "B_width"]


def test_every_committed_report_is_rebuilt_from_its_committed_evidence(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # config.study.evidence_dir is relative to the repository root
    # The text is compared: every figure is built, but not rasterised (~130 PNGs were ~80% of this
    # test's time); tests/test_report.py and the miniature studies check the PNGs themselves.
    monkeypatch.setattr(plots, "_save", lambda fig, path: open(path, "wb").close())
    rebuilt = []
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "studies", "s*.py"))):
        for scale in ("full", "cpu"):  # a report is published beside its evidence: <dir>/evidence -> <dir>.md
            config = load_study(path, scale)
            report_path = os.path.dirname(os.path.join(REPO, config.study.evidence_dir)) + ".md"
            if not (glob.glob(os.path.join(REPO, config.study.evidence_dir, "*.json")) and os.path.isfile(report_path)
                    and study_report.report_scale(open(report_path).read()) == scale):
                continue  # a report not (yet) regenerated with evidence at this scale
            text = _rebuilt(config, config.study.evidence_dir, str(tmp_path / f"{config.study.name}_{scale}"))
            assert text == open(report_path).read(), report_path
            rebuilt.append(os.path.relpath(report_path, REPO))
    assert {"docs/studies/000.md", "docs/studies/cpu/000.md", "docs/studies/001.md", "docs/studies/002.md",
            "docs/studies/003.md", "docs/studies/004.md"} <= set(rebuilt)


def test_a_full_report_names_the_reduced_scale_effects_it_does_not_bear_out(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the committed :full evidence of study 000, copied as if it were :cpu runs
    keys = ["E0_04_kernel", "E0_12_init"]
    full = _only(load_study("configs/studies/s000_lenet.py", "full"), keys)
    cpu = _only(load_study("configs/studies/s000_lenet.py", "cpu"), keys)
    cpu.study.evidence_dir = str(tmp_path / "cpu_evidence")
    for exp in study.experiments(cpu):
        ev = evidence.read("docs/studies/000/evidence", exp.key)
        ev.update(scale="cpu", config=evidence.compact(workdir_lib.config_to_dict(exp.config)))
        if exp.key == "E0_12_init":  # He init helps at this "scale": the full-scale effect reversed
            groups = {g["name"]: g for g in ev["groups"]}
            for field in ("runs", "curves"):
                groups["default"][field], groups["he_all"][field] = groups["he_all"][field], groups["default"][field]
        evidence.write(cpu.study.evidence_dir, ev)
    monkeypatch.setattr(study, "config_at", lambda path, scale: cpu if scale == "cpu" else None)
    text = open(study.write_study_report(full, str(tmp_path / "work"))).read()
    section = text.split("## At `:full` against `:cpu`", 1)[1].split("\n## ", 1)[0]
    assert "Short-horizon artefacts, a `:cpu` effect that `:full` does not show or reverses: C0.10." in section
    row = next(line for line in section.splitlines() if line.startswith("| C0.10 |"))
    assert "supported (-2.83 [-4.07, -1.60])" in row and "(+2.83 [1.60, 4.07])" in row and "reversed here" in row
    assert "neither shows an effect" in next(line for line in section.splitlines() if line.startswith("| C0.4 |"))
    cpu.study.evidence_dir = str(tmp_path / "nothing")  # no reduced-scale evidence: no section
    assert "against `:cpu`" not in open(study.write_study_report(full, str(tmp_path / "work2"))).read()


def test_evidence_matches_a_config_on_what_it_trained_not_where():
    from cifar_jax.experiments import evidence
    from cifar_jax.job import workdir as workdir_lib

    exp = study.experiments(mini_study())[0]
    config = workdir_lib.config_to_dict(exp.config)
    stored = {"format": evidence.FORMAT, "complete": True, "config": evidence.compact(config)}
    moved = workdir_lib.config_to_dict(exp.config)
    moved["data"]["dir"], moved["execution"]["microbatches"] = "/elsewhere", 4  # another machine
    assert evidence.matches(stored, moved)
    changed = workdir_lib.config_to_dict(exp.config)
    changed["optim"]["learning_rate"] = 0.5
    assert not evidence.matches(stored, changed)
    assert not evidence.matches({**stored, "complete": False}, config)
    longer = workdir_lib.config_to_dict(exp.config)
    longer["num_epochs"] += 1
    assert not evidence.matches(stored, longer)
    older = evidence.compact(workdir_lib.config_to_dict(exp.config))
    assert older["eval"].pop("test_every_epoch") is False  # written before the field existed
    assert evidence.matches({**stored, "config": older}, config)
    assert evidence.compact({"x": [0.123456789, 2], "y": 1 / 3}) == {"x": [0.1234568, 2], "y": 0.3333333}


def _only(config, keys: list[str]):
    """The study config with just the experiments `keys` and the claims on them."""
    import ml_collections

    from cifar_jax.experiments import verdicts

    config.experiments = ml_collections.ConfigDict({k: config.experiments[k] for k in keys})
    config.claims = ml_collections.ConfigDict({k: c for k, c in config.claims.items()
                                               if {r.partition(":")[0] for r in verdicts.refs(c)} <= set(keys)})
    return config


def test_cheap_full_trains_the_cpu_cheap_experiments_as_full_does_with_3_seeds():
    from cifar_jax.job import workdir as workdir_lib

    cheap_keys = {}
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "studies", "s*.py"))):
        full, cheap = load_study(path, "full"), load_study(path, "cheap_full")
        assert cheap.num_seeds == 3
        cheap_keys[cheap.study.name] = [e.key for e in study.experiments(cheap) if e.runnable]
        for a, b in zip(study.experiments(full), study.experiments(cheap)):
            a_dict, b_dict = workdir_lib.config_to_dict(a.config), workdir_lib.config_to_dict(b.config)
            assert (a_dict.pop("num_seeds"), b_dict.pop("num_seeds")) == (full.num_seeds, 3) and a_dict == b_dict
            assert b.runnable == (a.runnable and bool(full.experiments[a.key].cpu_cheap))
    assert cheap_keys["001"] == ["E1_6_mixup", "E1_7_final"] and cheap_keys["004"] == ["E4_2_mlp"]
    assert cheap_keys["002"] == ["E2_6b_kfold_A2", "E2_6b_kfold_A3", "F2_1b_leaky_kfold_A2", "F2_1b_leaky_kfold_A3"]


def test_evidence_of_a_larger_scale_stands_in_marked_and_judged_at_its_scale(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the committed :full evidence of study 000, checked against the :full config
    config = _only(load_study("configs/studies/s000_lenet.py", "cpu"), ["E0_04_kernel"])
    config.study.evidence_dir = "docs/studies/000/evidence"  # where the :full runs are
    calls = []
    out = study.run_study(config, str(tmp_path / "work"), train_fn=lambda c, w: calls.append(w))
    assert calls == [] and out["skipped"] == ["E0_04_kernel"]
    text = open(out["report"]).read()
    assert "Scales: at `:full` `E0_04_kernel`." in text and "| E0_04_kernel (at :full) |" in text
    assert "**Trained at `:full`** (the study's own epochs and data), not at this report's `:cpu`." in text
    claim_row = next(line for line in text.splitlines() if line.startswith("| C0.4 |"))
    assert "| supported" in claim_row  # a full-scale verdict word, never "consistent" at :cpu
    # a smaller scale never stands in for a larger one's training
    smaller = {**study_report.committed(config, study.experiments(config)[0], study.scales(config)), "scale": "smoke"}
    evidence.write(str(tmp_path / "smoke"), smaller)
    config.study.evidence_dir = str(tmp_path / "smoke")
    assert study_report.committed(config, study.experiments(config)[0], study.scales(config), larger_only=True) is None


def test_publishing_never_replaces_evidence_of_a_larger_scale(tmp_path):
    from cifar_jax.errors import UsageError

    config = mini_study()
    work, docs = tmp_path / "work", tmp_path / "docs"
    for folder, scale in ((work / "evidence", "cpu"), (docs / "mini" / "evidence", "full")):
        folder.mkdir(parents=True)
        (folder / "A_lr.json").write_text(f'{{"experiment": "A_lr", "scale": "{scale}"}}')
    (work / "report.md").write_text("# a :cpu report\n")
    with pytest.raises(UsageError, match=r"holds `:full` runs and this workdir's are `:cpu`"):
        study_report.publish(config, str(work), str(docs))
    assert '"full"' in (docs / "mini" / "evidence" / "A_lr.json").read_text()
    assert not (docs / "mini.md").exists()  # refused before anything was copied
    script = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "publish_study.py"),
                             os.path.join(REPO, "tests", "mini_study_config.py") + ":cpu", str(work), str(docs)],
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 2 and script.stderr.startswith("error: ") and "Traceback" not in script.stderr
    (docs / "mini" / "evidence" / "A_lr.json").write_text('{"experiment": "A_lr", "scale": "smoke"}')  # same scale
    assert study_report.publish(config, str(work), str(docs)).endswith("mini.md")
    assert (docs / "mini.md").read_text() == "# a :cpu report\n"
    (docs / "mini.md").write_text("Trained with `python -m cifar_jax.main --mode=study --config s.py:full --workdir W`")
    with pytest.raises(UsageError, match=r"mini.md is a `:full` report and this one is `:smoke`"):
        study_report.publish(config, str(work), str(docs))


def test_a_cpu_report_shows_its_cheap_full_runs_with_its_own_beside_them(tmp_path, monkeypatch):
    """Study 002's A3 cross-validation pair ran at :cheap_full (docs/studies/002/full/evidence) and
    at :cpu: the :cpu report shows the full-scale runs and judges the claim on both, side by side."""
    monkeypatch.chdir(REPO)
    keys = ["E2_6b_kfold_A3", "F2_1b_leaky_kfold_A3"]
    config = _only(load_study("configs/studies/s002_fashion_mnist.py", "cpu"), keys)
    text = _rebuilt(config, config.study.evidence_dir, str(tmp_path / "both"))
    assert "and, for the `:cheap_full` runs, in `docs/studies/002/full/evidence/`" in text
    assert "Scales: at `:cheap_full` `E2_6b_kfold_A3`, `F2_1b_leaky_kfold_A3`." in text
    assert "**refuted** (difference +5.44 [3.73, 7.15]); judged on runs at the study's scale." in text
    section = text.partition("## At `:cheap_full` against `:cpu`")[2].partition("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| C2.6d |"))
    full_cell, cpu_cell = row.split(" | ")[1:3]
    assert "epochs × 8,000 images" in cpu_cell and full_cell.split("(")[1] != cpu_cell.split("(")[1], row
    alone = _rebuilt(config, str(tmp_path / "no_cpu_runs"), str(tmp_path / "alone"))
    assert "Scales: at `:cheap_full`" in alone and "against `:cpu`" not in alone  # nothing to put beside them


def test_publishing_a_carried_scale_copies_its_complete_evidence_and_no_report(tmp_path):
    from cifar_jax.errors import UsageError

    config = mini_study()
    config.study.scale, config.study.evidence_dir = "cheap_full", str(tmp_path / "docs" / "mini" / "full" / "evidence")
    work = tmp_path / "work"
    (work / "evidence").mkdir(parents=True)
    (work / "report.md").write_text("# a :cheap_full report\n")
    for key, complete in (("A_lr", True), ("B_width", False)):
        evidence.write(str(work / "evidence"), {"experiment": key, "scale": "cheap_full", "complete": complete,
                                                "groups": []})
    assert study_report.publish(config, str(work), str(tmp_path / "docs")) == config.study.evidence_dir
    assert sorted(os.listdir(config.study.evidence_dir)) == ["A_lr.json"]  # the unfinished one stays behind
    assert not (tmp_path / "docs" / "mini.md").exists()  # the :cpu report shows them once rebuilt
    evidence.write(config.study.evidence_dir, {"experiment": "A_lr", "scale": "full", "complete": True, "groups": []})
    with pytest.raises(UsageError, match=r"holds `:full` runs and this workdir's are `:cheap_full`"):
        study_report.publish(config, str(work), str(tmp_path / "docs"))
    assert evidence.read(config.study.evidence_dir, "A_lr")["scale"] == "full"
    # Another ROOT gets the same layout under it (the config's directory is left alone).
    other = tmp_path / "other"
    assert study_report.publish(config, str(work), str(other)) == str(other / "mini" / "full" / "evidence")
    assert sorted(os.listdir(other / "mini" / "full" / "evidence")) == ["A_lr.json"]
    assert evidence.read(config.study.evidence_dir, "A_lr")["scale"] == "full"
