"""The studies' models (configs/study_models.py): cifar_jax's and PyTorch's networks have the
parameter count worked out from the layer sizes.

The cifar_jax half runs everywhere; the PyTorch half needs the `bench` extra and is skipped, with
its reason shown, where torch is not installed (CI installs only `dev`)."""

import jax
import numpy as np
import pytest
from flax import nnx

from cifar_jax import models
from cifar_jax.data.catalog import IMAGE_SHAPES
from configs import study_models

NAMES = list(study_models.MODELS)


def jax_parameter_count(config) -> int:
    shape = IMAGE_SHAPES[config.data.name]
    model = nnx.eval_shape(lambda: models.create_model(config.model, input_shape=shape, num_classes=10,
                                                       rngs=nnx.Rngs(0)))
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", NAMES)
def test_cifar_jax_counts_equal_the_layer_arithmetic(name):
    entry = study_models.MODELS[name]
    assert jax_parameter_count(entry.config()) == entry.params


def test_counts_the_studies_state():
    """STUDIES.md's own numbers for the models it sizes."""
    stated = {"lenet": 62_006, "fmnist_a2": 411_402, "fmnist_a3": 94_154, "block_full": 9_483_636,
              "cnn_bn_dropout": 157_962, "mlp": 1_579_530}
    assert {name: study_models.MODELS[name].params for name in stated} == stated


def test_every_study_has_a_model_and_its_batch_sizes():
    by_study = {}
    for entry in study_models.MODELS.values():
        by_study.setdefault(entry.study, []).append(entry)
        assert entry.config().batch_size == entry.batch_sizes[0]
    assert sorted(by_study) == ["000", "001", "002", "003", "004"]
    assert study_models.MODELS["cnn3"].batch_sizes == (20, 80)
    assert study_models.MODELS["lenet"].config(128).batch_size == 128


@pytest.fixture(scope="module")
def torch_reference():
    pytest.importorskip("torch", reason="PyTorch is in the bench extra (pip install -e .[bench])")
    from scripts import torch_reference
    return torch_reference


@pytest.mark.parametrize("name", NAMES)
def test_pytorch_counts_equal_the_layer_arithmetic(torch_reference, name):
    import torch

    entry = study_models.MODELS[name]
    config = entry.config()
    model = torch_reference.make_model(config)
    assert torch_reference.parameter_count(model) == entry.params
    h, w, c = IMAGE_SHAPES[config.data.name]
    model.eval()
    assert model(torch.zeros(2, c, h, w)).shape == (2, 10)


def test_pytorch_runners_step(torch_reference):
    """One training step each way changes the weights (tiny: 2 images, 2 models)."""
    config = study_models.MODELS["fmnist_a2"].config(2)
    one = torch_reference.ThroughputRunner(config, 2, threads=1, num_images=8)
    before = [p.detach().clone() for p in one.model.parameters()]
    one.steps(1)
    assert any(not np.allclose(a, b.detach()) for a, b in zip(before, one.model.parameters()))
    many = torch_reference.FuncThroughputRunner(config, 2, 2, threads=1, num_images=8, lr_scales=[1.0, 0.0])
    before = {k: v.detach().clone() for k, v in many.params.items()}
    many.steps(1)
    moved = [not np.allclose(before[k][0], v[0].detach()) for k, v in many.params.items()]
    frozen = [np.allclose(before[k][1], v[1].detach()) for k, v in many.params.items()]
    assert any(moved) and all(frozen)  # lr scale 0 leaves the second model where it was (SGD)


def test_pytorch_step_memory_counts_activations_and_parameters(torch_reference):
    """The count the benchmark sizes torch.func by: at least LeNet's first conv output and its
    parameters four times over, and growing with the batch."""
    config = study_models.MODELS["lenet"].config(4)
    small, large = (torch_reference.ThroughputRunner(config, b, threads=1, num_images=16).step_bytes() for b in (2, 8))
    first_conv = 2 * 6 * 28 * 28 * 4  # 2 images x 6 channels x 28 x 28 float32, saved for ReLU's backward
    assert small >= first_conv + 4 * 4 * study_models.MODELS["lenet"].params
    assert large > small + 3 * first_conv
