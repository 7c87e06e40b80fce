"""Shared test helpers: the CLI, a tiny config, synthetic data, and a direct training loop."""

import os
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax import config_paths
from cifar_jax.job import train
from cifar_jax.job import program as program_lib
from cifar_jax.core.splits import Examples, Splits
from configs import test as test_config

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The reason of every skip for missing data: conftest.py counts these in the summary (CI fails instead).
FASHION_MNIST_MISSING = f"no Fashion-MNIST at {FASHION_MNIST}; apt-get install dataset-fashion-mnist to run it"
needs_fashion_mnist = pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason=FASHION_MNIST_MISSING)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifar_jax.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def synthetic_splits(num_train: int = 256, num_eval: int = 128) -> Splits:
    """Class-dependent blobs, so a few steps of training visibly learn."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, num_train + num_eval)
    images = rng.integers(0, 20, (num_train + num_eval, 12, 12, 1)) + (labels * 24)[:, None, None, None]
    images = jnp.asarray(images.astype(np.uint8))
    labels = jnp.asarray(labels.astype(np.int32))
    return Splits(train=Examples(images[:num_train], labels[:num_train]),
                  eval={"val": Examples(images[num_train:], labels[num_train:])},
                  image_shape=(12, 12, 1), class_names=tuple(str(i) for i in range(10)))


def tiny_config(**overrides):
    config = test_config.get_config()
    config.batch_size = 8
    config.model.conv_features = (4,)
    config.model.kernel_size = (3,)
    config.model.strides = (1,)
    config.model.dense_features = (16,)
    config.model.dropout_rate = 0.2
    for path, value in overrides.items():
        config_paths.assign(config, path, value)
    return config


def assert_learned(accuracy, loss) -> None:
    """The runs of `synthetic_splits` trained: accuracy above chance (0.1, sd 0.027 on its 128
    eval examples) and loss below chance's ln 10 = 2.30, so later checks never compare untrained
    states. A slow seed of the tiny config reaches ~0.18 and 2.14 after one epoch."""
    assert np.min(accuracy) > 0.15 and np.max(loss) < 2.2, (accuracy, loss)


def train_runs(config, splits: Splits, seed_index=None, epochs: int = 2):
    """Trains the runs of `config` (optionally only some seeds) and returns (state, val metrics)."""
    setup = program_lib.setup_runs(config, splits.image_shape, len(splits.class_names), splits.num_train,
                             seed_index=seed_index)
    state = setup.state
    for epoch in range(1, epochs + 1):
        state, _, _ = train.train_epoch(setup.program, state, setup.hparams, *splits.train, epoch)
    return state, train.score_split(setup.program, state, setup.hparams, *splits.eval["val"], 64)


def assert_close_reassociated(actual, expected, err_msg=""):
    """Two computations that sum the same products in different orders (two formulations, vmap vs
    map, two compiled programs; XLA also picks the order per CPU: AVX2 vs AVX-512 tiles) differ
    by float32 rounding relative to the largest magnitude in the array, not to each entry: 32 ulps
    of the largest entry (seen: 1.5e-5 at a magnitude of 29 on an AMD EPYC, ~4 ulps) plus 1e-5."""
    expected = np.asarray(expected)
    atol = 32 * np.finfo(np.float32).eps * float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol, err_msg=err_msg)


def signal_and_wait(process: subprocess.Popen, sig: int, timeout: float = 60) -> tuple[str, float]:
    """Sends `sig` to a running CLI job and waits for it to exit: (its stderr, seconds to exit)."""
    process.send_signal(sig)
    sent = time.time()
    _, stderr = process.communicate(timeout=timeout)
    return stderr, time.time() - sent
