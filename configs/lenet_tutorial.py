"""The PyTorch CIFAR-10 tutorial recipe (first study): LeNet, batch 4, SGD lr 1e-3 momentum 0.9,
2 epochs, normalisation 0.5/0.5, a 10,000-image validation split carved from train.

LeNet: conv 6@5x5 -> maxpool 2 -> conv 16@5x5 -> maxpool 2 -> 120 -> 84 -> 10, VALID padding,
ReLU, PyTorch default init: 62,006 parameters.
"""

from configs import default as default_lib


def get_config():
    config = default_lib.get_config()
    config.num_epochs = 2
    config.batch_size = 4

    config.data.name = "cifar10"
    config.data.val_size = 10000.0
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.5, 0.5, 0.5)

    m = config.model
    m.name = "cnn"
    m.conv_features = (6, 16)
    m.kernel_size = (5, 5)
    m.strides = (1, 1)
    m.padding = "VALID"
    m.pool = "max"
    m.pool_size = 2
    m.activation = "relu"
    m.conv_batch_norm = False
    m.dense_batch_norm = False
    m.dense_features = (120, 84)
    m.dropout_rate = 0.0
    m.init = "torch_default"

    config.optim.name = "sgd"
    config.optim.learning_rate = 1e-3
    config.optim.momentum = 0.9
    config.optim.nesterov = False
    config.optim.weight_decay = 0.0
    config.optim.schedule = "constant"
    return config
