"""The fifth study's CNN: conv 64@3x3 and conv 128@3x3 (SAME), each followed by BatchNorm2d,
ReLU, dropout 0.5 and 2x2 max-pool, then one linear layer (8*8*128 -> 10). Adam lr 1e-3,
batch 100, 5 epochs, normalisation 0.5/0.5, no augmentation (the issue's crop+flip variant:
--config.augment.crop_padding=4 --config.augment.flip=True). 157,962 parameters.
"""

from configs import default as default_lib


def get_config():
    config = default_lib.get_config()
    config.num_epochs = 5
    config.batch_size = 100
    config.data.name = "cifar10"

    m = config.model
    m.name = "cnn"
    m.conv_features = (64, 128)
    m.kernel_size = (3, 3)
    m.strides = (1, 1)
    m.padding = "SAME"
    m.pool = "max"
    m.pool_size = 2
    m.activation = "relu"
    m.conv_batch_norm = True
    m.dense_batch_norm = False
    m.dense_features = ()
    m.dropout_rate = 0.5
    m.dropout_placement = "conv"  # after each conv stage's ReLU, before the pool
    m.init = "torch_default"
    m.bn_momentum = 0.9  # PyTorch's momentum 0.1

    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.0
    return config
