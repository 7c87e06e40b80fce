"""The per-channel mean and std a config gives, as the arrays the compiled step normalizes with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cifar_jax import checks


def normalization_constants(
    mean: float | Sequence[float], std: float | Sequence[float], num_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Config mean/std -> float32 arrays of shape (C,), as traced-friendly inputs for `normalize`.

    One value (or several equal ones, like the default (0.5, 0.5, 0.5) on a grayscale set) is
    broadcast to every channel; otherwise there must be exactly one value per channel.
    """
    constants = []
    for field, value in (("mean", mean), ("std", std)):
        values = np.atleast_1d(np.asarray(value, np.float64)).ravel()
        if not np.all(np.isfinite(values)):
            raise checks.fail(f"data.{field}", value, "must be finite numbers")
        if len(values) != num_channels:
            if len(values) == 0 or not np.all(values == values[0]):
                raise checks.fail(f"data.{field}", value, f"must have 1 value or one per channel ({num_channels})",
                                  f"the images have {num_channels} channel(s)")
            values = np.full(num_channels, values[0])
        if field == "std" and np.any(values <= 0):
            raise checks.fail("data.std", value, "must be > 0 in every channel")
        constants.append(values.astype(np.float32))
    return constants[0], constants[1]
