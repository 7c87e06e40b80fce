"""The Fashion-MNIST study's four 3-hidden-layer architectures on 28x28x1 images, selected by the
config argument: --config configs/fashion_mnist.py:ARCH with ARCH one of

  conv_conv_fc    conv 32 -> conv 64 -> dense 128 -> 10
  conv_fc_fc      conv 32 -> dense 128 -> dense 64 -> 10
  fc_fc_fc        dense 64 -> dense 128 -> dense 256 -> 10 (the MLP)
  conv_conv_conv  conv 32 -> conv 64 -> conv 128 -> 10
  resnet18        the CIFAR ResNet-18 on 1 channel (the study's neuron-correlation comparison)

Convs are 3x3 SAME with ReLU and 2x2 max-pool. Widths other than fc_fc_fc's 64/128/256 and
conv_conv_conv's 32/64/128, and the recipe (Adam lr 1e-3, batch 64, 10 epochs), are assumptions:
the issue does not give them. The study varied init, lr, batch size and augmentations around it.
"""

import os

from configs import default as default_lib

ARCHS = ("conv_conv_fc", "conv_fc_fc", "fc_fc_fc", "conv_conv_conv", "resnet18")
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist


def debian_dir() -> str:
    """Debian's Fashion-MNIST files when installed, else '' (TFDS): an explicit data.dir is
    authoritative and never falls back to a download, so it is only set where it exists."""
    return DEBIAN_DIR if os.path.isdir(DEBIAN_DIR) else ""


def get_config(arch: str = "conv_conv_fc"):
    if arch not in ARCHS:
        # Raised while the config file loads, before any training.
        from cifar_jax.errors import ConfigError

        raise ConfigError(f"configs/fashion_mnist.py:{arch} is unknown; use one of {', '.join(ARCHS)}")
    config = default_lib.get_config()
    config.num_epochs = 10
    config.batch_size = 64
    config.data.name = "fashion_mnist"
    config.data.dir = debian_dir()
    config.data.mean = (0.2860,)  # Fashion-MNIST training-set statistics, one channel
    config.data.std = (0.3530,)

    m = config.model
    m.name = "cnn"
    m.pool = "max"
    m.pool_size = 2
    m.activation = "relu"
    m.dropout_rate = 0.0
    m.init = "torch_default"
    if arch == "conv_conv_fc":
        m.conv_features, m.dense_features = (32, 64), (128,)
    elif arch == "conv_fc_fc":
        m.conv_features, m.dense_features = (32,), (128, 64)
    elif arch == "fc_fc_fc":
        m.name = "mlp"
        m.conv_features, m.dense_features = (), (64, 128, 256)
    elif arch == "conv_conv_conv":
        m.conv_features, m.dense_features = (32, 64, 128), ()
    else:
        m.name = "resnet18"  # a fixed architecture: the CNN fields below stay at their (ignored) defaults
    if m.name != "resnet18":
        n = len(m.conv_features)
        m.padding = "SAME"
        m.kernel_size = (3,) * n
        m.strides = (1,) * n

    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.0
    return config
