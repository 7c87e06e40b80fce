"""The fifth study's MLP: 3072 -> 512 (BatchNorm1d, ReLU, dropout 0.5) -> 10. Adam lr 1e-3,
batch 100, 5 epochs, normalisation 0.5/0.5. 1,579,530 parameters.
"""

try:
    from configs import default as default_lib
except ImportError:  # loaded by path from outside the repository root
    import pathlib, sys  # noqa: E401

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import default as default_lib


def get_config():
    config = default_lib.get_config()
    config.num_epochs = 5
    config.batch_size = 100
    config.data.name = "cifar10"

    m = config.model
    m.name = "mlp"
    m.dense_features = (512,)  # hidden widths
    m.dense_batch_norm = True
    m.activation = "relu"
    m.dropout_rate = 0.5
    m.dropout_placement = "dense"  # after every hidden layer
    m.init = "torch_default"
    m.bn_momentum = 0.9

    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.0
    return config
