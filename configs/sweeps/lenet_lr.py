"""A LeNet learning-rate sweep: the tutorial recipe (configs/lenet_tutorial.py: batch 4, SGD with
momentum 0.9) at learning rates 1e-3 (the tutorial's), 3e-3 and 1e-2, 4 seeds, 1 epoch.

The learning rate is a traced input of the training program, so the 3 rates x 4 seeds = 12 runs
train as ONE compiled program in `W/all/`.

    python -m cifar_jax.main --mode=sweep --config configs/sweeps/lenet_lr.py --workdir runs/lr \\
        --config.data.dir=../shared/data/cifar10-jpeg
"""

import ml_collections

try:
    from configs import lenet_tutorial as study
except ImportError:  # loaded by path from outside the repository root
    import pathlib, sys  # noqa: E401

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from configs import lenet_tutorial as study


def get_config() -> ml_collections.ConfigDict:
    config = study.get_config()
    config.name = "lenet_lr"
    config.num_seeds = 4
    config.num_epochs = 1
    config.sweep = ml_collections.ConfigDict()
    config.sweep.kind = "grid"
    config.sweep.axes = (("optim.learning_rate", (1e-3, 3e-3, 1e-2)),)
    config.sweep.constraints = ()
    config.sweep.metric = "val_accuracy"
    config.sweep.alpha = 0.05
    config.sweep.labels = ()
    return config
