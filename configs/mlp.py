"""The fifth study's MLP: 3072 -> 512 (BatchNorm1d, ReLU, dropout 0.5) -> 10. Adam lr 1e-3,
batch 100, 5 epochs, normalisation 0.5/0.5. 1,579,530 parameters.
"""

from configs import cnn_bn_dropout


def get_config():
    """The CNN's recipe (data, Adam 1e-3, batch 100, 5 epochs) with the MLP in place of the CNN."""
    config = cnn_bn_dropout.get_config()
    m = config.model
    m.name = "mlp"
    m.conv_features = ()
    m.kernel_size = ()
    m.strides = ()
    m.conv_batch_norm = False
    m.dense_features = (512,)  # hidden widths
    m.dense_batch_norm = True
    m.dropout_placement = "dense"  # after every hidden layer
    return config
