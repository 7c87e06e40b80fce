"""Times a sample of study 000's runs both ways on this machine and extrapolates to the whole
study, for its "ours against PyTorch run after run" figure (issue 26).

At each batch size the study trains, cifar_jax trains the study's 5 seeds of one LeNet setting in
one program for 2 epochs (`python -m cifar_jax.main`, a whole job: compile, training, validation,
checkpoints); its second epoch's wall time (from its epoch lines) is the time an epoch, and the
rest of the job's is fixed (compile, set-up, the last checkpoints). PyTorch
(`scripts/torch_reference.py`'s loop, the same config) trains `--torch_runs` of the 5 runs one
after another for 1 epoch with the same validation pass, and its time an epoch is scaled to 5
runs (its runs differ only in their seed). Each epoch is the study's: 40,000 training and 10,000
validation images. Rounds alternate the two frameworks batch size by batch size.

    python scripts/study_time_sample.py --batch_sizes 1,4,6,7,8,10 --rounds 2

The extrapolation walks every program of `configs/studies/s000_lenet.py:full` (batch size B,
E epochs, R runs): cifar_jax = fixed(B) + E * R/5 * epoch(B), PyTorch = E * R/5 * epoch_torch(B).
Counting a wider program (R > 5) as R/5 programs of 5 seeds overstates cifar_jax's time, since a
wider vmap trains more model-images a second. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_reference  # noqa: E402  (scripts/ is on sys.path when run as a script)
from cifar_jax.experiments import study, sweep  # noqa: E402
from configs import lenet_tutorial  # noqa: E402
from configs.studies import s000_lenet  # noqa: E402

SEEDS = 5
WIDTH = 240  # the walk's fc1 width from E0.3 on


def overrides(batch_size: int, train_limit: int, val_size: int, data_dir: str) -> dict[str, str]:
    """The study's LeNet at one batch size (`s000_lenet.base`), 2 epochs."""
    return {"batch_size": str(batch_size), "num_epochs": "2", "num_seeds": str(SEEDS),
            "data.train_limit": str(train_limit), "data.val_size": str(val_size), "data.dir": data_dir,
            "model.dense_features": f"({WIDTH},84)"}


EPOCH_WALL = re.compile(r"^epoch (\d+)/\d+  .*  wall (\d+):(\d\d):(\d\d)  ETA", re.M)


def epoch_walls(stdout: str) -> list[int]:
    """The job's wall seconds at the end of each epoch, from its epoch lines (`progress.epoch_line`)."""
    return [int(h) * 3600 + int(m) * 60 + int(s) for _, h, m, s in EPOCH_WALL.findall(stdout)]


def ours(fields: dict[str, str]) -> tuple[float, float]:
    """(fixed seconds, seconds an epoch) of cifar_jax's whole 2-epoch job: results.json's wall time
    (compile, training, validation, checkpoints; not the interpreter's start, which PyTorch's
    in-process timing lacks too) less twice its second epoch, or 0 where the second epoch took
    longer than the first with its compiles (the epoch is then the larger share, never the smaller)."""
    with tempfile.TemporaryDirectory() as workdir:
        argv = [sys.executable, "-m", "cifar_jax.main", "--config", "configs/lenet_tutorial.py",
                "--workdir", workdir] + [f"--config.{k}={v}" for k, v in fields.items()]
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
        with open(os.path.join(workdir, "results.json")) as f:
            total = float(json.load(f)["wall_time_s"])
    first, second = epoch_walls(done.stdout)
    epoch = second - first  # steady state: it includes epoch 1's checkpoint, written while epoch 2 trains
    return max(total - 2 * epoch, 0.0), epoch


def pytorch(fields: dict[str, str], runs: int) -> tuple[float, float]:
    """(wall seconds of the 5 runs one after another for 1 epoch, scaled from `runs` of them;
    training images/s of one run)."""
    config = lenet_tutorial.get_config()
    config.batch_size, config.num_epochs = int(fields["batch_size"]), 1
    config.data.val_size = int(fields["data.val_size"])
    config.model.dense_features = (WIDTH, 84)
    splits = torch_reference.load_splits(config, fields["data.dir"], int(fields["data.train_limit"]))
    job = torch_reference.train_job(config, runs, splits, log=lambda _line: None)
    rate = sum(r["images"] for r in job["runs"]) / sum(r["train_s"] for r in job["runs"])
    return job["wall_s"] * SEEDS / runs, rate


def study_programs() -> list[tuple[int, int, int]]:
    """(batch size, epochs, runs) of every program study 000 trains at :full."""
    return [(int(g.config.batch_size), int(g.config.num_epochs), len(g.settings) * int(g.config.num_seeds))
            for exp in study.experiments(s000_lenet.get_config("full")) if exp.runnable
            for g in sweep.expand(exp.config)]


def require_batch_sizes(sampled: list[int], programs: list[tuple[int, int, int]]) -> None:
    """Every batch size the study trains is in the sample: checked before the timing starts."""
    missing = sorted({b for b, _, _ in programs} - set(sampled))
    if missing:
        raise SystemExit(f"the study trains batch sizes {missing} that the sample lacks: add them to --batch_sizes")


def extrapolate(rows: list[dict], programs: list[tuple[int, int, int]]) -> tuple[float, float]:
    """(cifar_jax seconds, PyTorch seconds) for `programs`, from the sample's per-batch costs."""
    by_batch = {r["batch_size"]: r for r in rows}
    require_batch_sizes(list(by_batch), programs)
    ours_s = sum(by_batch[b]["fixed_s"] + e * r / SEEDS * by_batch[b]["epoch_s"] for b, e, r in programs)
    torch_s = sum(e * r / SEEDS * by_batch[b]["torch_s"] for b, e, r in programs)
    return ours_s, torch_s


def sample_round(batch_sizes: list[int], args: argparse.Namespace) -> list[dict]:
    """One row a batch size, printed as it lands."""
    rows = []
    for batch_size in batch_sizes:
        fields = overrides(batch_size, args.train_limit, args.val_size, args.data_dir)
        fixed, epoch = ours(fields)
        torch_s, rate = pytorch(fields, args.torch_runs)
        rows.append({"batch_size": batch_size, "fixed_s": fixed, "epoch_s": epoch, "torch_s": torch_s,
                     "torch_img_s": rate})
        print(f"| {batch_size} | {fixed:.1f} | {epoch:.1f} | {torch_s:.1f} | {epoch / torch_s:.2f} | {rate:,.0f} |",
              flush=True)
    return rows


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    """Each batch size's median over rounds, field by field."""
    return [{key: statistics.median(r[key] for r in same) for key in same[0]} for same in zip(*rounds)]


def summary_line(name: str, rows: list[dict], programs: list[tuple[int, int, int]],
                 args: argparse.Namespace) -> tuple[float, float]:
    """Prints the whole study's extrapolated times from `rows`; returns them (cifar_jax, PyTorch)."""
    ours_s, torch_s = extrapolate(rows, programs)
    print(f"\n{name}: study 000 at :full ({len(programs)} programs, {sum(r for _, _, r in programs)} runs): cifar_jax "
          f"{ours_s / 3600:.2f} h, PyTorch run after run {torch_s / 3600:.2f} h, ratio {ours_s / torch_s:.2f} "
          f"({SEEDS} seeds a program, PyTorch {args.torch_runs} runs of 5 timed, {args.threads} threads, "
          f"torch {torch.__version__})", flush=True)
    return ours_s, torch_s


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_sizes", default="1,4,6,7,8,10")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch_runs", type=int, default=2, help="PyTorch runs timed of each batch size's 5")
    parser.add_argument("--train_limit", type=int, default=50000, help="images before the validation split")
    parser.add_argument("--val_size", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data_dir", default=torch_reference.DEFAULT_CIFAR_DIR)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    programs = study_programs()  # before the timing: a study config that no longer expands fails now
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    require_batch_sizes(batch_sizes, programs)
    rounds, ratios = [], []
    for index in range(args.rounds):
        print(f"\nround {index + 1}: seconds\n\n| batch | cifar_jax fixed | cifar_jax an epoch | PyTorch an epoch "
              "(5 runs) | ratio an epoch | PyTorch training img/s (one run) |\n|---:|---:|---:|---:|---:|---:|", flush=True)
        rounds.append(sample_round(batch_sizes, args))
        round_ours_s, round_torch_s = summary_line(f"round {index + 1}", rounds[-1], programs, args)
        ratios.append(round_ours_s / round_torch_s)
    ours_s, torch_s = summary_line("median over rounds", median_rows(rounds), programs, args)
    result = {"rounds": rounds, "round_ratios": ratios, "study_ours_s": ours_s, "study_torch_s": torch_s,
              "ratio": ours_s / torch_s, "train_limit": args.train_limit, "val_size": args.val_size,
              "threads": args.threads, "torch_runs": args.torch_runs, "torch": torch.__version__}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
