"""The Fashion-MNIST study's learning-rate sweep: the conv_conv_fc model (configs/fashion_mnist.py,
Adam, batch 64, 10 epochs) at learning rates 1e-4, 3e-4, 1e-3, 3e-3 and 1e-2.

The study's exact rates are not in the issue; this half-decade grid around Adam's usual 1e-3 is an
assumption. The learning rate is traced: 5 rates x num_seeds runs train as ONE program (`W/all/`).
Other architectures: --config.model.* overrides, or copy this file with another
`fashion_mnist.get_config(arch)`.

    python -m cifar_jax.main --mode=sweep --config configs/sweeps/fashion_mnist_lr.py --workdir runs/fm_lr
"""

import ml_collections

try:
    from configs import fashion_mnist as study
except ImportError:  # loaded by path from outside the repository root
    import pathlib, sys  # noqa: E401

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from configs import fashion_mnist as study


def get_config() -> ml_collections.ConfigDict:
    config = study.get_config("conv_conv_fc")
    config.name = "fashion_mnist_lr"
    config.sweep = ml_collections.ConfigDict()
    config.sweep.kind = "grid"
    config.sweep.axes = (("optim.learning_rate", (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),)
    config.sweep.constraints = ()
    config.sweep.metric = "val_accuracy"
    config.sweep.alpha = 0.05
    config.sweep.labels = ()
    return config
