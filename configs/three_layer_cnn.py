"""The three-layer CNN study: conv 32@3x3 -> conv 128@5x5 (SAME padding, ReLU and 2x2 max-pool
after each) -> one hidden dense layer -> output layer, on CIFAR-10.

Assumptions (the issue gives the architecture, not these): hidden width 256; Adam lr 1e-3,
batch 64, 10 epochs, normalisation 0.5/0.5. The study varied the channel/kernel grid, learning
rate, batch size, L2, batch norm and mixup around this: override with --config.x=y.
"""

from configs import default as default_lib


def get_config():
    config = default_lib.get_config()
    config.num_epochs = 10
    config.batch_size = 64
    config.data.name = "cifar10"

    m = config.model
    m.name = "cnn"
    m.conv_features = (32, 128)
    m.kernel_size = (3, 5)
    m.strides = (1, 1)
    m.padding = "SAME"
    m.pool = "max"
    m.pool_size = 2
    m.activation = "relu"
    m.dense_features = (256,)
    m.dropout_rate = 0.0
    m.init = "torch_default"

    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.0
    return config
