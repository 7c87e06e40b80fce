"""Analyses of trained runs that a study drew conclusions from without measuring them.

`gate_weights(workdir)`: the adaptive block CNN's gate coefficients (study 003 claimed the gate
lets the model "focus on the most important features"; it never looked at them). For every run
of a workdir, each block's K branch weights a_k = gate(global average of the block's input),
averaged over validation images: a uniform row says the gate does not choose, a peaked one that
it does.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from cifar_jax import evaluation, splits as splits_lib
from cifar_jax.models import block as block_lib, layers

GATE_IMAGES = 512  # validation images the gate coefficients are averaged over


def block_gates(model: Any, inputs: jax.Array) -> list[np.ndarray]:
    """Per block, the mean over `inputs` of its gate coefficients (K,), computed the way
    `Block.__call__` computes them (the block's own gate function)."""
    means = []
    x = inputs
    for blk in model.blocks:
        # The model's own gate functions (a private table of models/block.py, read, not copied).
        gates = block_lib._GATE_FNS[blk.gate_fn](blk.gate(layers.global_avg_pool(x)))
        means.append(np.asarray(gates.mean(axis=0)))
        x = blk(x)
    return means


def gate_weights(workdir: str, checkpoint: str = "best", num_images: int = GATE_IMAGES) -> dict[str, Any]:
    """{'epoch', 'runs': [{'setting', 'seed_index', 'blocks': [[a_1..a_K] per block]}]} for every run
    of a block-CNN workdir, on the first `num_images` validation images it was validated on."""
    loaded = evaluation.load(workdir, checkpoint)
    if loaded.config.model.name != "block_cnn":
        raise ValueError(f"{workdir} trained {loaded.config.model.name!r}, not block_cnn: it has no gates")
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
