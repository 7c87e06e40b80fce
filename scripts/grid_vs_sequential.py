"""Measures a traced hyperparameter grid trained as ONE compiled program against the same runs
trained one after another, counting compilations of the training step in each case.

    python scripts/grid_vs_sequential.py --data_dir ../shared/data/cifar10-jpeg --train_limit 10000
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cifar_jax.job import train  # noqa: E402
from cifar_jax.job import program as program_lib
from cifar_jax.core.splits import Splits, prepare_splits  # noqa: E402
from configs import lenet_tutorial  # noqa: E402


def count_step_compiles() -> list[str]:
    """Registers a listener that records every lowering of the training-step function."""
    lowered: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and "train_steps" in kwargs.get("fun_name", ""):
            lowered.append(kwargs["fun_name"])
    jax.monitoring.register_event_duration_secs_listener(listener)
    return lowered


def train_once(config, splits: Splits) -> np.ndarray:
    """Trains every run of `config` for its epochs; returns the final validation accuracies."""
    setup = program_lib.setup_runs(config, splits.image_shape, len(splits.class_names), splits.num_train)
    state = setup.state
    for epoch in range(1, config.num_epochs + 1):
        state, _, _ = train.train_epoch(setup.program, state, setup.hparams, *splits.train, epoch)
    return train.score_split(setup.program, state, setup.hparams, *splits.eval["val"],
                             config.eval_batch_size)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--train_limit", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    args = parser.parse_args()

    config = lenet_tutorial.get_config()
    config.data.dir, config.data.train_limit = args.data_dir, args.train_limit
    config.data.val_size = float(args.train_limit // 5)
    config.batch_size, config.num_epochs, config.num_seeds = args.batch_size, 1, args.seeds
    splits = prepare_splits(config.data)
    compiles = count_step_compiles()

    grid_config = config.copy_and_resolve_references()
    grid_config.hparam_grid.learning_rate = tuple(args.rates)
    start = time.time()
    together = train_once(grid_config, splits)
    grid_seconds, grid_compiles = time.time() - start, len(compiles)

    start = time.time()
    one_config = config.copy_and_resolve_references()
    one_config.num_seeds = 1
    alone = []
    for rate in args.rates:
        for seed in range(args.seeds):
            one_config.optim.learning_rate, one_config.seed = rate, seed
            alone.append(train_once(one_config, splits)[0])
    sequential_seconds, sequential_compiles = time.time() - start, len(compiles) - grid_compiles

    report = {
        "runs": len(args.rates) * args.seeds,
        "grid": {"seconds": round(grid_seconds, 1), "step_compiles": grid_compiles},
        "sequential": {"seconds": round(sequential_seconds, 1), "step_compiles": sequential_compiles},
        "speedup": round(sequential_seconds / grid_seconds, 2),
        "grid_val_accuracy": np.round(together, 4).tolist(),
        "sequential_val_accuracy": np.round(alone, 4).tolist(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
