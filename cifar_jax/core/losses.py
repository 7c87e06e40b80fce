"""Classification losses on probability targets (one-hot, smoothed or mixed by mixup).

Targets are rows of class probabilities, so label smoothing and mixup compose by plain linear
mixing and one loss covers all of them. `smooth_labels` then `softmax_cross_entropy` is
`torch.nn.CrossEntropyLoss(label_smoothing=s)` per example: target `(1 - s) * one_hot + s / K`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def smooth_labels(targets: jax.Array, smoothing: jax.typing.ArrayLike) -> jax.Array:
    """`(1 - smoothing) * targets + smoothing / num_classes`; `smoothing` may be traced."""
    targets = jnp.asarray(targets)
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        targets = targets.astype(jnp.float32)
    return optax.smooth_labels(targets, jnp.asarray(smoothing, targets.dtype))


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross entropy `-sum_k targets_k * log_softmax(logits)_k`, shape `[batch]`."""
    return optax.softmax_cross_entropy(logits, jnp.asarray(targets, logits.dtype))
