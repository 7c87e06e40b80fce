"""A smoke-scale study under two JAX processes on localhost (2 CPU devices each) reports the
numbers one process reports, only process 0 writes its files, and one process rebuilds its report
with --mode=report. Every wait has a deadline (`finish`, `run_alone`)."""

import re

import pytest

from helpers import needs_fashion_mnist
from test_multiprocess import finish, ours, run_alone, start_job

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

STUDY = ("--mode=study", "--config", "tests/mini_study_config.py")


def numbers(report_md: str) -> list[str]:
    """The report's rows of settings and claims: every number but wall times and speeds."""
    return [line for line in report_md.splitlines() if line.startswith(("| learning_rate=", "| C1.1 |"))]


def files(workdir) -> list[str]:
    """The workdir's files and folders but the checkpoints' insides, TensorBoard's named alike."""
    names = [str(p.relative_to(workdir)) for p in workdir.rglob("*") if "checkpoints" not in p.parts[:-1]]
    return sorted(re.sub(r"events\.out\.tfevents\..*", "events", name) for name in names)


def test_a_study_under_two_processes_reports_what_one_process_does(tmp_path):
    out0, out1 = (ours(out) for out in finish(start_job(tmp_path / "two", job=STUDY)))
    assert "study: " + str(tmp_path / "two" / "report.md") in out0
    assert not [line for line in out1 if line.startswith(("study", "sweep", "mini", "epoch"))], out1
    alone = run_alone(*STUDY, "--workdir", str(tmp_path / "one"), devices=4)  # the same runs per device
    assert alone.returncode == 0, alone.stderr[-3000:]
    two, one = ((tmp_path / name / "report.md").read_text() for name in ("two", "one"))
    assert len(numbers(two)) == 3 and numbers(two) == numbers(one)
    assert files(tmp_path / "two") == files(tmp_path / "one")
    # One process rebuilds the two processes' report: the same numbers.
    (tmp_path / "two" / "report.md").unlink()
    rebuilt = run_alone("--mode=report", "--config", "tests/mini_study_config.py", "--workdir", str(tmp_path / "two"),
                        devices=1)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert numbers((tmp_path / "two" / "report.md").read_text()) == numbers(one)
