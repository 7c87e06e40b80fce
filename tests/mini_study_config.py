"""A smoke-scale study for the command line (tests/test_multiprocess_study.py): one experiment of
two batch sizes (groups that change shapes: two programs), 1 epoch, 2 seeds, 300 Fashion-MNIST
training images, and a claim on them."""

import ml_collections

from cifar_jax.experiments import study
from configs import fashion_mnist
from configs import test as test_config


def get_config() -> ml_collections.ConfigDict:
    base = test_config.get_config()
    base.model.conv_features = (4, 8)
    base.model.dense_features = (16,)
    base.progress_every_s = 0
    config = study.study_config(name="mini", title="miniature", scale="smoke", config_path="tests/mini_study_config.py",
                                source="this test", num_seeds=2, data_dir=fashion_mnist.debian_dir(),
                                train_limit=400, val_size=100, test_limit=100, execution=base.execution)
    config.experiments.B_batch = study.experiment(base, ids=("B",), title="batch size",
                                                  axes=(("batch_size", (16, 32)),))
    config.claims.C1_01 = study.claim("batch 16 beats 32", "B_batch:batch_size=16", "B_batch:batch_size=32",
                                      expect="greater")
    return config
