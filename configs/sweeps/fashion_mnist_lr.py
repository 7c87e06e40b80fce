"""The Fashion-MNIST study's learning-rate sweep: the conv_conv_fc model (configs/fashion_mnist.py,
Adam, batch 64, 10 epochs) at learning rates 1e-4, 3e-4, 1e-3, 3e-3 and 1e-2.

The study's exact rates are not in the issue; this half-decade grid around Adam's usual 1e-3 is an
assumption. The learning rate is traced: 5 rates x num_seeds runs train as ONE program (`W/all/`).
Other architectures: --config.model.* overrides, or copy this file with another
`fashion_mnist.get_config(arch)`.

    python -m cifar_jax.main --mode=sweep --config configs/sweeps/fashion_mnist_lr.py --workdir runs/fm_lr
"""

import ml_collections

from configs import fashion_mnist as study
from configs.sweep_spec import sweep_spec


def get_config() -> ml_collections.ConfigDict:
    config = study.get_config("conv_conv_fc")
    config.name = "fashion_mnist_lr"
    config.sweep = sweep_spec("grid", (("optim.learning_rate", (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),))
    return config
