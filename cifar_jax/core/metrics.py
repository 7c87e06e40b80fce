"""Per-run metrics (plain arrays, vmap-friendly) and statistics across seeds.

Everything a run reports is derived from a confusion matrix and a loss sum, so evaluation only
has to accumulate two small arrays per run, and accuracy, per-class accuracy and macro-F1 can
never disagree with each other.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special  # stdtrit: the t quantile without scipy.stats' ~1 s import in every job
from flax import nnx


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
    """Counts [true class, predicted class] with a one-hot product (a matmul, fast under vmap);
    `weights` (0/1 per example) leave examples out without changing shapes."""
    true_one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if weights is not None:
        true_one_hot = true_one_hot * weights[:, None]
    predicted_one_hot = jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32)
    return true_one_hot.T @ predicted_one_hot


def layer_gradient_norms(grads: nnx.State) -> dict[str, jax.Array]:
    """L2 norm of the gradient of each layer (all parameters of one module together), keyed by
    the module's path, e.g. 'stages/0/conv': the per-layer view the studies plotted."""
    squares: dict[str, jax.Array] = {}
    for path, variable in nnx.to_flat_state(grads):
        layer = _layer_name(path)
        squares[layer] = squares.get(layer, 0.0) + jnp.sum(jnp.square(variable[...]))
    return {layer: jnp.sqrt(total) for layer, total in squares.items()}


def layer_names(params: nnx.State) -> list[str]:
    """The keys `layer_gradient_norms` returns for these parameters (works on abstract states)."""
    return list(dict.fromkeys(_layer_name(path) for path, _ in nnx.to_flat_state(params)))


def _layer_name(path: tuple) -> str:
    return "/".join(str(part) for part in path[:-1]) or "model"


def dead_channels(intermediates: nnx.State) -> list[jax.Array]:
    """Per ReLU layer, 1.0 for each channel dead on the whole batch (`layers.sow_dead_channels`)."""
    return [jnp.asarray(v, jnp.float32) for v in jax.tree.leaves(intermediates)]


def dead_unit_fraction(dead: list[jax.Array]) -> jax.Array:
    """Mean over ReLU layers of the fraction of channels dead on the whole batch (0 without ReLUs)."""
    return jnp.mean(jnp.stack([jnp.mean(d) for d in dead])) if dead else jnp.zeros(())


def classification_metrics(confusion: np.ndarray, loss_sum: np.ndarray) -> dict[str, np.ndarray]:
    """Loss, accuracy, per-class accuracy and macro-F1 from confusion matrices with any leading axes.

    Macro-F1 follows sklearn's `f1_score(average="macro")` with `labels=None`: it averages over the
    classes present in the labels *or* the predictions (a class only ever predicted scores F1 = 0
    and counts; a class in neither is left out).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_counts = confusion.sum(axis=-1)
    predicted_counts = confusion.sum(axis=-2)
    correct = np.diagonal(confusion, axis1=-2, axis2=-1)
    total = true_counts.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_accuracy = np.where(true_counts > 0, correct / true_counts, np.nan)
        f1 = np.where(true_counts + predicted_counts > 0, 2 * correct / (true_counts + predicted_counts), 0.0)
    present = true_counts + predicted_counts > 0
    macro_f1 = (f1 * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)
    return {
        "loss": np.asarray(loss_sum, dtype=np.float64) / np.maximum(total, 1),
        "accuracy": correct.sum(axis=-1) / np.maximum(total, 1),
        "macro_f1": macro_f1,
        "per_class_accuracy": per_class_accuracy,
    }


def summarize(values: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std and a Student-t confidence interval over seeds, ignoring NaN (diverged) runs."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    n = finite.size
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    half_width = float(scipy.special.stdtrit(n - 1, 0.5 + confidence / 2) * std / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "ci_low": mean - half_width, "ci_high": mean + half_width, "n": n}


def format_mean_std(values: np.ndarray, scale: float = 100.0, digits: int = 1) -> str:
    """'52.3 ± 0.7' for a metric over seeds (scaled to percent by default)."""
    stats = summarize(values)
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def per_run_rows(metrics: Mapping[str, np.ndarray], index: int) -> dict[str, float | list[float]]:
    """One run's scalars and vectors as JSON-ready Python values."""
    row: dict[str, float | list[float]] = {}
    for name, value in metrics.items():
        item = np.asarray(value)[index]
        row[name] = item.tolist() if item.ndim else float(item)
    return row
