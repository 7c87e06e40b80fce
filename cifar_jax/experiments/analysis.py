"""Analyses of trained runs that a study drew conclusions from without measuring them.

`gate_weights(workdir)`: the adaptive block CNN's gate coefficients (study 003 claimed the gate
lets the model "focus on the most important features"; it never looked at them). For every run
of a workdir, each block's K branch weights a_k = gate(global average of the block's input),
averaged over validation images: a uniform row says the gate does not choose, a peaked one that
it does.

`output_correlation(workdir)`: study 002's statistic, the mean and sd of the correlation matrix of
the output units over images, with the diagonal (its convention: the value then depends on the
number of units, F2.4) and without.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from cifar_jax.job import evaluation
from cifar_jax.core import splits as splits_lib
from cifar_jax.errors import ConfigError

GATE_IMAGES = 512  # validation images the gate coefficients are averaged over
CORRELATION_IMAGES = 1000  # the study's subset size is n/s; 1,000 as STUDIES.md §4.5 costs it


def block_gates(model: Any, inputs: jax.Array) -> list[np.ndarray]:
    """Per block, the mean over `inputs` of its gate coefficients (K,), as `Block.__call__`
    weights its branches."""
    means = []
    x = inputs
    for blk in model.blocks:
        means.append(np.asarray(blk.gate_weights(x).mean(axis=0)))
        x = blk(x)
    return means


def gate_weights(workdir: str, checkpoint: str = "best", num_images: int = GATE_IMAGES) -> dict[str, Any]:
    """{'epoch', 'runs': [{'setting', 'seed_index', 'blocks': [[a_1..a_K] per block]}]} for every run
    of a block-CNN workdir, on the first `num_images` validation images it was validated on."""
    loaded = evaluation.load(workdir, checkpoint)
    if loaded.config.model.name != "block_cnn":
        raise ConfigError(f"analysis 'gates': {workdir} trained model {loaded.config.model.name!r}, which has no "
                          "gates (only block_cnn has)")
    examples, _ = splits_lib.eval_examples(loaded.config.data, loaded.grid, "val")
    images = examples.images[:num_images]
    hparams = loaded.hparams
    runs = []
    for r in range(loaded.grid.num_runs):
        inputs = splits_lib.to_model_input(images, hparams["mean"][r], hparams["std"][r])
        blocks = block_gates(loaded.model(r).model, inputs)
        runs.append({"setting": int(loaded.grid.setting_index[r]), "seed_index": int(loaded.grid.seed_index[r]),
                     "blocks": [b.tolist() for b in blocks]})
    return {"epoch": loaded.epoch, "checkpoint": checkpoint, "num_images": int(images.shape[0]), "runs": runs}


def correlation_stats(outputs: np.ndarray) -> dict[str, float]:
    """Mean and sd of the units' Pearson correlation matrix over examples, with the diagonal (the
    study's convention, which depends on the matrix size) and without it."""
    matrix = np.corrcoef(np.asarray(outputs, np.float64), rowvar=False)
    off = matrix[~np.eye(matrix.shape[0], dtype=bool)]
    return {"mean": float(np.nanmean(matrix)), "sd": float(np.nanstd(matrix)),
            "off_diagonal_mean": float(np.nanmean(off)), "off_diagonal_sd": float(np.nanstd(off))}


def output_correlation(workdir: str, checkpoint: str = "best", num_images: int = CORRELATION_IMAGES) -> dict[str, Any]:
    """Study 002's neuron-correlation statistic for every run of a workdir: the correlations of the
    output units (logits) over validation images, with and without the diagonal."""
    loaded = evaluation.load(workdir, checkpoint)
    examples, _ = splits_lib.eval_examples(loaded.config.data, loaded.grid, "val")
    images = examples.images[:num_images]
    hparams = loaded.hparams
    runs = []
    for r in range(loaded.grid.num_runs):
        logits = loaded.model(r)(splits_lib.to_model_input(images, hparams["mean"][r], hparams["std"][r]))
        runs.append({"setting": int(loaded.grid.setting_index[r]), "seed_index": int(loaded.grid.seed_index[r]),
                     **correlation_stats(np.asarray(logits))})
    return {"epoch": loaded.epoch, "checkpoint": checkpoint, "num_images": int(images.shape[0]), "runs": runs}
