"""The Fashion-MNIST study's 5-fold cross-validation, for its four architectures
(configs/fashion_mnist.py: conv_conv_fc, conv_fc_fc, fc_fc_fc, conv_conv_conv).

`data.num_folds = 5` makes the folds one more vmapped axis of the training program, each fold with
a fresh initialization (the study reused the model across folds, so its table climbed from 91% to
99%); a setting's runs are then seeds x folds, each validated on its own held-out fold. The
architectures are zipped fields (name, widths, kernels, strides change together), one program each,
named by `sweep.labels`. The test split stays untouched for the final numbers.

    python -m cifar_jax.main --mode=sweep --config configs/sweeps/fashion_mnist_kfold.py --workdir runs/fm_cv
"""

import ml_collections

from configs import fashion_mnist as study
from configs.sweep_spec import sweep_spec

ARCHS = ("conv_conv_fc", "conv_fc_fc", "fc_fc_fc", "conv_conv_conv")
FIELDS = ("name", "conv_features", "dense_features", "kernel_size", "strides")


def get_config() -> ml_collections.ConfigDict:
    config = study.get_config("conv_conv_fc")
    config.name = "fashion_mnist_kfold"
    config.data.num_folds = 5
    models = [study.get_config(arch).model for arch in ARCHS]
    axes = tuple((f"model.{field}", tuple(m[field] for m in models)) for field in FIELDS)
    config.sweep = sweep_spec("zip", axes, labels=ARCHS)
    return config
