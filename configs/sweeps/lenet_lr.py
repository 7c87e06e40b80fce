"""A LeNet learning-rate sweep: the tutorial recipe (configs/lenet_tutorial.py: batch 4, SGD with
momentum 0.9) at learning rates 1e-3 (the tutorial's), 3e-3 and 1e-2, 4 seeds, 1 epoch.

The learning rate is a traced input of the training program, so the 3 rates x 4 seeds = 12 runs
train as ONE compiled program in `W/all/`.

    python -m cifar_jax.main --mode=sweep --config configs/sweeps/lenet_lr.py --workdir runs/lr \\
        --config.data.dir=../shared/data/cifar10-jpeg
"""

import ml_collections

from configs import lenet_tutorial as study
from configs.sweep_spec import sweep_spec


def get_config() -> ml_collections.ConfigDict:
    config = study.get_config()
    config.name = "lenet_lr"
    config.num_seeds = 4
    config.num_epochs = 1
    config.sweep = sweep_spec("grid", (("optim.learning_rate", (1e-3, 3e-3, 1e-2)),))
    return config
