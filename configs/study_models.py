"""The models the five studies trained, each with its study's recipe and batch sizes, by name.

`scripts/benchmark.py --models` times every one of them against PyTorch, and
`scripts/torch_reference.py` builds the same networks from the same configs with PyTorch's own
layers. `params` is each network's parameter count worked out from its layer sizes (the arithmetic
of STUDIES.md), so a test can check both frameworks against a number neither of them computed.

Each config is the study's recipe (`configs/studies/s00N_*.py`, its `:full` values: data,
normalisation, optimizer, schedule, augmentation); the batch sizes are the ones the study
trained the model at.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from configs import cnn_bn_dropout, lenet_tutorial, mlp
from configs.studies import s001_three_layer_cnn, s002_fashion_mnist, s003_block_cnn, s004_cnn_mlp


def conv(c_in: int, c_out: int, k: int) -> int:
    """A k x k convolution with bias."""
    return k * k * c_in * c_out + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def batch_norm(c: int) -> int:
    """Scale and shift (the running statistics are not parameters)."""
    return 2 * c


def block(c_in: int, c_out: int, k: int) -> int:
    """A block of the block CNN: k branch convolutions, the gate, batch norm."""
    return conv(c_in, k * c_out, 3) + dense(c_in, k) + batch_norm(c_out)


def mlp_params(widths: tuple[int, ...]) -> int:
    """Dense layers through `widths` (input first, classes last)."""
    return sum(dense(a, b) for a, b in zip(widths, widths[1:]))


@dataclasses.dataclass(frozen=True)
class StudyModel:
    study: str
    description: str
    make_config: Callable[[], ml_collections.ConfigDict]
    batch_sizes: tuple[int, ...]
    params: int

    def config(self, batch_size: int | None = None) -> ml_collections.ConfigDict:
        """The recipe, at `batch_size` (default: the study's first)."""
        config = self.make_config()
        config.batch_size = int(batch_size or self.batch_sizes[0])
        return config


def _fashion(arch: str) -> Callable[[], ml_collections.ConfigDict]:
    def make():
        config = s002_fashion_mnist.base("full")
        config.model.name, config.model.conv_features, config.model.dense_features = s002_fashion_mnist.ARCHS[arch]
        n = len(config.model.conv_features)
        config.model.kernel_size, config.model.strides = (3,) * n, (1,) * n
        return config
    return make


def _study_004(base) -> Callable[[], ml_collections.ConfigDict]:
    return lambda: s004_cnn_mlp.recipe(base, "full", True)


MODELS: dict[str, StudyModel] = {
    "lenet": StudyModel(
        "000", "tutorial LeNet", lenet_tutorial.get_config, (4, 128),
        conv(3, 6, 5) + conv(6, 16, 5) + mlp_params((16 * 5 * 5, 120, 84, 10))),
    "cnn3": StudyModel(
        "001", "three-layer CNN 32@3x3-128@5x5, BN, H 128", lambda: s001_three_layer_cnn.base("full"), (20, 80),
        conv(3, 32, 3) + batch_norm(32) + conv(32, 128, 5) + batch_norm(128) + mlp_params((8 * 8 * 128, 128, 10))),
    "fmnist_a1": StudyModel(
        "002", "A1 conv32-conv64-fc128 (pool after each conv)", _fashion("A1_conv_conv_fc"), (64,),
        conv(1, 32, 3) + conv(32, 64, 3) + mlp_params((7 * 7 * 64, 128, 10))),
    "fmnist_a2": StudyModel(
        "002", "A2 conv32-fc64-fc128", _fashion("A2_conv_fc_fc"), (64,),
        conv(1, 32, 3) + mlp_params((14 * 14 * 32, 64, 128, 10))),
    "fmnist_a3": StudyModel(
        "002", "A3 MLP 784-64-128-256", _fashion("A3_mlp"), (64,), mlp_params((28 * 28, 64, 128, 256, 10))),
    "fmnist_a4": StudyModel(
        "002", "A4 conv32-conv64-conv128 (pool after each conv)", _fashion("A4_conv_conv_conv"), (64,),
        conv(1, 32, 3) + conv(32, 64, 3) + conv(64, 128, 3) + dense(3 * 3 * 128, 10)),
    "block_full": StudyModel(
        "003", "block CNN 64-128-256-512, K 6, MLP 256-128-64", lambda: s003_block_cnn.recipe("full", reduced=False),
        (128,), block(3, 64, 6) + block(64, 128, 6) + block(128, 256, 6) + block(256, 512, 6)
        + mlp_params((512, 256, 128, 64, 10))),
    "block_reduced": StudyModel(
        "003", "block CNN 16-32, K 2, MLP 64-32 (the :cpu model)", lambda: s003_block_cnn.recipe("full", reduced=True),
        (128,), block(3, 16, 2) + block(16, 32, 2) + mlp_params((32, 64, 32, 10))),
    "cnn_bn_dropout": StudyModel(
        "004", "CNN [conv-BN-ReLU-dropout-pool] x (64, 128) -> linear", _study_004(cnn_bn_dropout), (100,),
        conv(3, 64, 3) + batch_norm(64) + conv(64, 128, 3) + batch_norm(128) + dense(8 * 8 * 128, 10)),
    "mlp": StudyModel(
        "004", "MLP 3072-512 (BN, dropout 0.5)-10", _study_004(mlp), (100,),
        dense(32 * 32 * 3, 512) + batch_norm(512) + dense(512, 10)),
}
