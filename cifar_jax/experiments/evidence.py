"""Evidence: one experiment's per-run results as a compact JSON file, the only input of a study report.

`extract(workdir, exp)` reads an experiment's directory (sweep.json; each group's results.json,
metrics.jsonl, steps.jsonl, data.json, config.json; the analysis cache) and returns

    {"format", "experiment", "scale", "config" (the experiment's sweep config), "commits",
     "hardware", "plan" (sweep.json), "complete", "groups": [{"name", "num_train", "num_classes",
     "batch_size", "num_epochs", "num_runs", "wall_time_s", "best_metric", "settings",
     "runs" (results.json rows: scalars only), "curves" (metrics.jsonl: columns + rows),
     "steps" (steps.jsonl, at most MAX_STEP_RECORDS records), "analysis"}]}

with every float rounded to 7 significant digits (float32 precision): kilobytes per experiment,
no checkpoints. A study writes it to WORKDIR/evidence/<experiment>.json when the experiment
finishes; committed beside the report (`config.study.evidence_dir`) it lets `--mode=report`
rebuild every number and plot on a fresh clone, and `--mode=study` skip the experiment.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cifar_jax.experiments import report
from cifar_jax.job import progress, storage
from cifar_jax.job import workdir as workdir_lib

FORMAT = 1
DIR = "evidence"
MAX_STEP_RECORDS = 100
def compact(value: Any) -> Any:
    """Floats rounded to 7 significant digits, lists and dicts recursively; other values as they are."""
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, (list, tuple)):
        return [compact(v) for v in value]
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    return value


def _scalars(row: dict[str, Any]) -> dict[str, Any]:
    """A results/metrics row without its per-class lists and confusion matrices."""
    return {k: v for k, v in row.items() if not isinstance(v, (list, dict))}


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields in which two experiment configs differ in what they train: the workdir's resume
    rule (`workdir.differing_fields`: where and how fast a job runs may differ, a field added
    later matches at its old behaviour) plus the number of epochs, which a resume may extend."""
    fields = workdir_lib.differing_fields(stored, current)
    return fields + (["num_epochs"] if stored.get("num_epochs") != current.get("num_epochs") else [])


def matches(evidence: dict[str, Any] | None, config_dict: dict[str, Any]) -> bool:
    """Whether `evidence` is complete and was trained with this experiment config."""
    return bool(evidence and evidence.get("complete") and evidence.get("format") == FORMAT
                and not differences(evidence["config"], compact(config_dict)))


def _curves(group_dir: str) -> dict[str, Any]:
    rows = [_scalars(r) for r in report.read_jsonl(os.path.join(group_dir, "metrics.jsonl"))]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return {"columns": columns, "rows": [[r.get(c) for c in columns] for r in rows]}


def _steps(group_dir: str) -> list[dict[str, Any]]:
    records = progress.read_steps(group_dir)
    stride = max(1, -(-len(records) // MAX_STEP_RECORDS))
    kept = records[::stride]
    if records and kept[-1] is not records[-1]:
        kept.append(records[-1])
    return kept


def extract_group(group_dir: str, group: dict[str, Any], analysis: dict[str, Any] | None) -> dict[str, Any] | None:
    """One finished group's evidence; None while its results.json does not exist."""
    results = workdir_lib.load_json(group_dir, "results.json")
    data_meta = workdir_lib.load_json(group_dir, workdir_lib.DATA_FILE) or {}
    stored = workdir_lib.load_json(group_dir, workdir_lib.CONFIG_FILE) or {}
    if results is None:
        return None
    return compact({
        "name": group["name"], "num_train": data_meta.get("num_train", 0),
        "num_classes": len(data_meta.get("class_names", ())) or 10, "batch_size": stored.get("batch_size", 0),
        "num_epochs": results["num_epochs"], "num_runs": results["num_runs"],
        "wall_time_s": results.get("wall_time_s", 0.0), "best_metric": results.get("best_metric", "val_accuracy"),
        "settings": results.get("settings") or [{}], "runs": [_scalars(r) for r in results["runs"]],
        "curves": _curves(group_dir), "steps": _steps(group_dir), "analysis": analysis})


def extract(workdir: str, exp: Any, scale: str, analyse: Any = None) -> dict[str, Any] | None:
    """The evidence of experiment `exp` (a `study.Experiment`) from WORKDIR/<exp.key>/; None when it
    never started. `analyse(exp_dir, group)` computes a finished group's analysis record."""
    exp_dir = os.path.join(workdir, exp.key)
    plan = workdir_lib.load_json(exp_dir, report.SWEEP_FILE)
    if plan is None:
        return None
    state = workdir_lib.load_json(workdir, "study.json") or {"sessions": []}
    groups = []
    for group in plan["groups"]:
        group_dir = os.path.join(exp_dir, group["name"])
        record = None
        if analyse and storage.exists(os.path.join(group_dir, "results.json")):
            record = analyse(exp_dir, group)
        found = extract_group(group_dir, group, record)
        if found:
            groups.append(found)
    sessions = state["sessions"]
    return {"format": FORMAT, "experiment": exp.key, "scale": scale,
            "config": compact(workdir_lib.config_to_dict(exp.config)),
            "commits": list(dict.fromkeys(s.get("commit", "unknown") for s in sessions)),
            "hardware": sessions[-1]["hardware"] if sessions else {}, "plan": plan,
            "complete": len(groups) == len(plan["groups"]), "groups": groups}


def path(directory: str, key: str) -> str:
    return os.path.join(directory, f"{key}.json")


def write(directory: str, evidence: dict[str, Any]) -> str:
    """Writes DIRECTORY/<experiment>.json (one line per group: small diffs when it changes)."""
    storage.makedirs(directory)
    target = path(directory, evidence["experiment"])
    head = {k: v for k, v in evidence.items() if k != "groups"}
    body = ",\n".join(json.dumps(g, separators=(",", ":")) for g in evidence["groups"])
    text = json.dumps(head, separators=(",", ":"))[:-1] + ',\n"groups":[\n' + body + "\n]}\n"
    workdir_lib.write_text_atomic(target, text)
    return target


def read(directory: str, key: str) -> dict[str, Any] | None:
    """DIRECTORY/<key>.json, or None when it does not exist."""
    return workdir_lib.load_json(directory, f"{key}.json")


def settings(evidence: dict[str, Any]) -> list[report.Setting]:
    """The report's settings, rebuilt from evidence alone, in the sweep's order."""
    out = []
    by_name = {g["name"]: g for g in evidence["groups"]}
    for group in evidence["plan"]["groups"]:
        found = by_name.get(group["name"])
        if found:
            rows = [dict(zip(found["curves"]["columns"], r)) for r in found["curves"]["rows"]]
            results = {"settings": found["settings"], "runs": found["runs"], "best_metric": found["best_metric"]}
            out += report.group_settings(group, results, rows)
    return out


def pending(evidence: dict[str, Any]) -> list[str]:
    """The groups of the plan without results yet."""
    done = {g["name"] for g in evidence["groups"]}
    return [g["name"] for g in evidence["plan"]["groups"] if g["name"] not in done]
