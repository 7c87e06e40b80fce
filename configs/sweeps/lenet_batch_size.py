"""The tutorial study's batch-size sweep: LeNet (configs/lenet_tutorial.py) at batch sizes 1, 4, 6,
7, 8 and 10, everything else the tutorial recipe (SGD lr 1e-3, momentum 0.9, 2 epochs).

The study compared single runs ("batch size 6: 62% beats batch size 4: 60%"); here each batch
size is trained over `num_seeds` seeds and results.md says which differences are significant.
Batch size changes shapes, so each value is its own group (program) in `W/batch_size=<b>/`.

    python -m cifar_jax.main --mode=sweep --config configs/sweeps/lenet_batch_size.py --workdir runs/bs
"""

import ml_collections

from configs import lenet_tutorial as study
from configs.sweep_spec import sweep_spec


def get_config() -> ml_collections.ConfigDict:
    config = study.get_config()
    config.name = "lenet_batch_size"
    config.sweep = sweep_spec("grid", (("batch_size", (1, 4, 6, 7, 8, 10)),))
    return config
