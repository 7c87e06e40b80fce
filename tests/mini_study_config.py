"""A smoke-scale study for the command line (tests/test_multiprocess_study.py): one experiment of
two learning rates (traced: one program; shape-changing groups under two processes are
tests/test_multiprocess.py's sweep), 1 epoch, 2 seeds, 300 Fashion-MNIST training images, and a
claim on them."""

import ml_collections

from cifar_jax.experiments import dsl
from configs import fashion_mnist
from configs import test as test_config


def get_config(scale: str = "smoke") -> ml_collections.ConfigDict:  # noqa: ARG001 -- one scale; publish_study passes it
    base = test_config.get_config()
    base.model.conv_features = (4, 8)
    base.model.dense_features = (16,)
    base.progress_every_s = 0
    config = dsl.study_config(name="mini", title="miniature", scale="smoke", config_path="tests/mini_study_config.py",
                              source="this test", num_seeds=2, data_dir=fashion_mnist.debian_dir(),
                              train_limit=400, val_size=100, test_limit=100, execution=base.execution)
    config.experiments.A_lr = dsl.experiment(base, ids=("A",), title="learning rate",
                                             axes=(("optim.learning_rate", (0.01, 0.05)),))
    config.claims.C1_01 = dsl.claim("lr 0.05 beats 0.01", "A_lr:learning_rate=0.05", "A_lr:learning_rate=0.01",
                                    expect="greater")
    return config
