"""Times a sample of study 000's runs both ways on this machine, for the study's "ours against
PyTorch run after run" figure (issue 26): at each batch size the study trains, cifar_jax trains the
study's 5 seeds of one LeNet setting in one program (`python -m cifar_jax.main`, a whole job:
compile, training, validation, checkpoints), and PyTorch (`scripts/torch_reference.py`'s loop,
the same config) trains the same 5 runs one after another with the same validation passes.

    python scripts/study_time_sample.py --train_limit 8000 --batch_sizes 1,4,6,10

A sample is 1 epoch on `train_limit` images, so compilation weighs more in it than in the study's
5-epoch runs on 40,000 images: the ratio it prints is conservative for cifar_jax. Its PyTorch
training rates are the study config's `TORCH_LENET_RATES`. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch_reference  # noqa: E402  (scripts/ is on sys.path when run as a script)
from configs import lenet_tutorial  # noqa: E402

SEEDS = 5
WIDTH = 240  # the walk's fc1 width from E0.3 on


def overrides(batch_size: int, train_limit: int, data_dir: str) -> dict[str, str]:
    """The study's LeNet at one batch size (`s000_lenet.base`), 1 epoch on a sample of images."""
    return {"batch_size": str(batch_size), "num_epochs": "1", "num_seeds": str(SEEDS),
            "data.train_limit": str(train_limit), "data.val_size": "2000", "data.dir": data_dir,
            "model.dense_features": f"({WIDTH},84)"}


def ours(fields: dict[str, str]) -> float:
    """Wall seconds of cifar_jax's whole job as results.json records them (compile, training,
    validation, checkpoints; not the interpreter's start, which PyTorch's in-process timing lacks too)."""
    with tempfile.TemporaryDirectory() as workdir:
        argv = [sys.executable, "-m", "cifar_jax.main", "--config", "configs/lenet_tutorial.py",
                "--workdir", workdir] + [f"--config.{k}={v}" for k, v in fields.items()]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(workdir, "results.json")) as f:
            return float(json.load(f)["wall_time_s"])


def pytorch(fields: dict[str, str]) -> tuple[float, float]:
    """(wall seconds of the 5 runs one after another, training images/s of one run)."""
    config = lenet_tutorial.get_config()
    config.batch_size, config.num_epochs = int(fields["batch_size"]), 1
    config.data.val_size = int(fields["data.val_size"])
    config.model.dense_features = (WIDTH, 84)
    splits = torch_reference.load_splits(config, fields["data.dir"], int(fields["data.train_limit"]))
    job = torch_reference.train_job(config, SEEDS, splits, log=lambda _line: None)
    rate = sum(r["images"] for r in job["runs"]) / sum(r["train_s"] for r in job["runs"])
    return job["wall_s"], rate


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_sizes", default="1,4,6,10")
    parser.add_argument("--train_limit", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data_dir", default=torch_reference.DEFAULT_CIFAR_DIR)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print("| batch | cifar_jax, 5 seeds in one job (s) | PyTorch, 5 runs one after another (s) | ratio | "
          "PyTorch training img/s (one run) |\n|---:|---:|---:|---:|---:|", flush=True)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        fields = overrides(batch_size, args.train_limit, args.data_dir)
        ours_s = ours(fields)
        torch_s, rate = pytorch(fields)
        rows.append({"batch_size": batch_size, "ours_s": ours_s, "torch_s": torch_s, "torch_img_s": rate})
        print(f"| {batch_size} | {ours_s:.1f} | {torch_s:.1f} | {ours_s / torch_s:.2f} | {rate:,.0f} |", flush=True)
    total = sum(r["ours_s"] for r in rows) / sum(r["torch_s"] for r in rows)
    print(f"all batch sizes: cifar_jax takes {total:.2f} of PyTorch's time "
          f"({args.train_limit} images, 1 epoch, {SEEDS} seeds, {args.threads} threads, torch {torch.__version__})")
    result = {"rows": rows, "ratio": total, "train_limit": args.train_limit, "threads": args.threads}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
