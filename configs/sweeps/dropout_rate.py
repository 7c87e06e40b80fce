"""The fifth study's dropout-rate sweep on its CNN (configs/cnn_bn_dropout.py: two conv stages with
BatchNorm, dropout after each, Adam, batch 100, 5 epochs): rates 0.0, 0.1, ..., 0.9.

The study went up to 1.0, which is degenerate: inverted dropout at rate 1 zeroes every unit (and
its 1/(1-p) scale is infinite), so the network outputs a constant; it is left out (the sweep
refuses rates outside [0, 1)). The rate is traced, so 10 rates x num_seeds runs train as ONE
program (`W/all/`); the model is built with dropout layers (model.dropout_rate = 0.9 > 0, the
largest value; each run then gets its own rate), and rate 0.0 is an exact no-op.

    python -m cifar_jax.main --mode=sweep --config configs/sweeps/dropout_rate.py --workdir runs/dropout
"""

import ml_collections

from configs import cnn_bn_dropout as study
from configs.sweep_spec import sweep_spec

RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # literals: no 0.30000000000000004


def get_config() -> ml_collections.ConfigDict:
    config = study.get_config()
    config.name = "dropout_rate"
    config.model.dropout_rate = max(RATES)  # so the dropout layers exist in the one program
    config.sweep = sweep_spec("grid", (("model.dropout_rate", RATES),))
    return config
