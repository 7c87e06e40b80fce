"""Which data sets exist and what a loaded one is: names, image shapes, class names, and the
`Dataset` every reader returns after checking its arrays against them."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cifar_jax import checks
from cifar_jax.errors import DataError

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
}
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar10": (32, 32, 3),
    "fashion_mnist": (28, 28, 1),
    "mnist": (28, 28, 1),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A whole data set in host memory: uint8 NHWC images, int32 labels.

    `test_images`/`test_labels` are None when the source has no test split (like the shared
    CIFAR-10 copy); callers then carve everything they evaluate on out of train.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: tuple[str, ...]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_name(name: str) -> str:
    """Returns `name` if it is a supported data set, else a ConfigError listing the choices."""
    return checks.one_of("data.name", name, tuple(IMAGE_SHAPES))


def _validated(
    name: str, images: Any, labels: Any, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Checks one split against the data set's shape and classes; returns (uint8 NHWC, int32)."""
    images, labels = np.asarray(images), np.asarray(labels)
    expected = IMAGE_SHAPES[name]
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images are {images.dtype}, expected uint8 pixels 0..255")
    if expected[2] == 1 and images.ndim == 3:
        images = images[..., None]  # grayscale N,H,W -> N,H,W,1
    if images.ndim != 4 or images.shape[1:] != expected:
        raise DataError(
            f"{where}: images have shape {images.shape}, {name} needs (N, "
            f"{', '.join(map(str, expected))}); is --config.data.name right?"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    num_classes = len(CLASS_NAMES[name])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels span {labels.min()}..{labels.max()}, {name} has classes 0..{num_classes - 1}"
        )
    return images, labels.astype(np.int32)


def make_dataset(
    name: str,
    train: tuple[Any, Any],
    test: tuple[Any, Any] | None,
    source: str,
    where: tuple[str, str],
) -> Dataset:
    """A `Dataset` from (images, labels) pairs, each checked (`where` names them in errors)."""
    train_images, train_labels = _validated(name, *train, where[0])
    test_images = test_labels = None
    if test is not None:
        test_images, test_labels = _validated(name, *test, where[1])
    return Dataset(name, train_images, train_labels, test_images, test_labels, CLASS_NAMES[name], source)

