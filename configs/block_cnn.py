"""The fourth study's adaptive block CNN and its recipe (89.6% test accuracy in the report).

Model: 4 blocks over channels [3, 64, 128, 256, 512], each with k=6 parallel branches (conv 3x3
SAME -> ReLU -> dropout 0.1 -> max-pool 2x2) mixed by a gate (global average pool -> dense(k),
no nonlinearity) and followed by BatchNorm2d; global average pooling; MLP 256-128-64-10 (ReLU).
Recipe: Adam with coupled L2 weight decay 5e-4 (torch.optim.Adam(weight_decay=5e-4)), 50 epochs,
linear warmup (5 epochs) + cosine decay per step, random crop (padding 4) + horizontal flip,
batch 128.

Assumptions (not in the issue): peak lr 1e-3; per-channel CIFAR-10 normalisation statistics.
This model is for a GPU/TPU: on a CPU use a reduced one, e.g.
--config.model.block_channels='(16, 32)' --config.model.num_branches=2.
"""

from configs import default as default_lib


def get_config():
    config = default_lib.get_config()
    config.num_epochs = 50
    config.batch_size = 128
    config.data.name = "cifar10"
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2470, 0.2435, 0.2616)

    m = config.model
    m.name = "block_cnn"
    m.block_channels = (64, 128, 256, 512)  # one block per entry; input channels come from the data
    m.num_branches = 6
    m.gate = "none"  # none | softmax | sigmoid | relu
    m.classifier_features = (256, 128, 64)  # hidden widths of the classifier MLP
    m.activation = "relu"
    m.dropout_rate = 0.1
    m.dropout_placement = "conv"  # in the branches (after the ReLU, before the pool)
    m.init = "torch_default"
    m.bn_momentum = 0.9

    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 5e-4
    config.optim.weight_decay_mode = "coupled"
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_epochs = 5.0

    config.augment.crop_padding = 4
    config.augment.crop_mode = "zero"
    config.augment.flip = True
    return config
