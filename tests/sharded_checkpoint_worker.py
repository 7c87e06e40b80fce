"""Saves or restores a sharded checkpoint of tiny runs on however many devices this process has;
prints JSON. tests/test_sharding.py runs it with XLA_FLAGS forcing 4 or 8 CPU devices, and calls
`main` on its own one device (each process start costs seconds of CI).

    DIR save: trains 5 runs (padded to the device count) for an epoch, saves, prints the scores,
              the shardings handed to Orbax and the checksum's collectives
    DIR restore: restores into this process's mesh (from the files, through a new Checkpoints)
              and prints the scores
    DIR save restore: both in turn, {"save": ..., "restore": ...}
"""

import json
import sys

import jax
import numpy as np

from cifar_jax.core import execution
from cifar_jax.job import program as program_lib
from cifar_jax.job import checkpoint, train
from helpers import synthetic_splits, tiny_config

NUM_RUNS = 5


def scores(setup, state, splits) -> list[float]:
    result = train.score_split(setup.program, state, setup.hparams,
                               *execution.replicate(tuple(splits.eval["val"]), setup.program.plan), 32)
    return np.asarray(setup.real_runs(result)["accuracy"]).tolist() + np.asarray(
        setup.real_runs(result)["loss"]).tolist()


def main(mode: str, workdir: str) -> dict:
    splits = synthetic_splits(num_train=64, num_eval=32)
    setup = program_lib.setup_runs(tiny_config(num_seeds=NUM_RUNS), splits.image_shape, 10, splits.num_train)
    checkpoints = checkpoint.Checkpoints(workdir, keep=1, best_metric="val_accuracy")
    out = {"devices": len(jax.devices())}
    if mode == "save":
        images, labels = execution.replicate(tuple(splits.train), setup.program.plan)
        state, _, _ = train.train_epoch(setup.program, setup.state, setup.hparams, images, labels, 1)
        flat = checkpoints._args(state, {}, NUM_RUNS)["state"].item
        out["shards"] = sorted({(str(leaf.sharding.spec), leaf.addressable_shards[0].data.shape[0], leaf.shape[0])
                                for leaf in flat.values()})
        out["checksum_collectives"] = [name for name in ("all-gather", "all-to-all", "collective-permute")
                                       if name in checkpoint._checksums.lower(flat, NUM_RUNS).compile().as_text()]
        checkpoints.save(1, state, {}, best_value=None, num_runs=NUM_RUNS)
    else:
        state = checkpoints.restore(setup.checkpoint_like(), num_runs=NUM_RUNS)[1]
    checkpoints.wait()
    checkpoints.close()
    out["scores"] = scores(setup, state, splits)
    return out


if __name__ == "__main__":
    print(json.dumps({mode: main(mode, sys.argv[1]) for mode in sys.argv[2:]}))
