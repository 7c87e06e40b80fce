"""Trains tiny runs on however many devices this process has; prints per-run results as JSON.

tests/test_sharding.py runs it in subprocesses with XLA_FLAGS forcing 8 CPU devices (a process's
device count is fixed when JAX starts) and compares with the same runs on one device.
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from cifar_jax.core import execution
from cifar_jax.job import train
from cifar_jax.job import program as program_lib
from helpers import synthetic_splits, tiny_config

COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def train_tiny(num_seeds: int, grid_size: int = 0) -> dict:
    """`num_seeds` runs, or (grid_size > 0) one seed of that many learning rates: runs sharing a
    data stream, split over the devices."""
    splits = synthetic_splits(num_train=64, num_eval=32)
    config = tiny_config(num_seeds=num_seeds)
    if grid_size:
        config.hparam_grid.learning_rate = tuple(0.01 * (i + 1) for i in range(grid_size))
    setup = program_lib.setup_runs(config, splits.image_shape, 10, splits.num_train)
    plan = setup.program.plan
    images, labels = execution.replicate(tuple(splits.train), plan)
    hlo = train_steps_hlo(setup, images, labels)  # before training donates the initial state
    state, _, _ = train.train_epoch(setup.program, setup.state, setup.hparams, images, labels, 1)
    scores = setup.real_runs(train.score_split(setup.program, state, setup.hparams,
                                               *execution.replicate(tuple(splits.eval["val"]), plan), 32))
    shardings = {str(leaf.sharding.spec) if isinstance(leaf.sharding, NamedSharding) else "single"
                 for leaf in jax.tree.leaves(state)}
    return {"loss": np.asarray(scores["loss"]).tolist(), "accuracy": np.asarray(scores["accuracy"]).tolist(),
            "num_state_runs": int(state.step.shape[0]), "shardings": sorted(shardings),
            "collectives": [name for name in COLLECTIVES if name in hlo], "devices": len(jax.devices()),
            "stream_size": getattr(setup.program.stream_layout, "stream_size", 1),
            "runs_spec": str(PartitionSpec(execution.RUNS_AXIS))}


def train_steps_hlo(setup, images, labels) -> str:
    import jax.numpy as jnp

    state, program = setup.state, setup.program
    num_runs = state.step.shape[0]
    index = setup.on_devices(jnp.broadcast_to(jnp.arange(images.shape[0]), (setup.num_runs, images.shape[0])))
    batches = program.epoch_batches(state, jnp.int32(1), index)
    sums = program_lib.zero_sums(num_runs, program.layer_names)
    lowered = program.train_steps.lower(state, setup.hparams, images, labels, batches, jnp.int32(0), sums,
                                        length=program.plan.steps_per_call)
    return lowered.compile().as_text()


if __name__ == "__main__":
    specs = {spec: spec.split("x") for spec in sys.argv[1:]}  # "8": 8 seeds; "1x16": 1 seed x 16 rates
    print(json.dumps({spec: train_tiny(int(n[0]), int(n[1]) if len(n) > 1 else 0) for spec, n in specs.items()}))
