"""A tiny CPU-friendly config: a small LeNet-style CNN on a slice of Fashion-MNIST, in seconds."""

import ml_collections

from configs import default, fashion_mnist


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = "test"
    config.num_seeds = 2
    config.num_epochs = 1
    config.batch_size = 32
    config.eval_batch_size = 500
    config.data.name = "fashion_mnist"
    config.data.dir = fashion_mnist.debian_dir()
    config.data.train_limit = 4000
    config.data.test_limit = 1000
    config.data.val_size = 1000.0
    config.data.mean = (0.286,)
    config.data.std = (0.353,)
    config.model.conv_features = (8, 16)
    config.model.kernel_size = (5, 5)
    config.model.dense_features = (32,)
    config.optim.name = "sgd"
    config.optim.learning_rate = 0.05
    config.optim.momentum = 0.9
    # No TensorBoard: clu's writer imports TensorFlow, ~6 s of each ~12 s test job (tests that
    # check the event files turn it on).
    config.tensorboard = False
    return config
