"""Dev run (`--config.dev_run=True`): any config, end to end, in seconds.

Like Lightning's `fast_dev_run`: one epoch of a few batches, a small validation split and test
slice, 1-2 seeds, learning-rate schedules scaled into that epoch. Everything else (model,
optimizer, augmentation, grids, folds, checkpointing, the sweep's groups) stays as configured, so
a dev run exercises the same code paths as the real run and fails where it would.
"""

import math

import ml_collections

TRAIN_BATCHES = 2  # training steps per run (each fold's share of the data holds this many batches)
VAL_IMAGES = 64
TEST_IMAGES = 64
EVAL_BATCH_SIZE = 64
MAX_SEEDS = 2
MAX_WARMUP_FRACTION = 0.5  # of the one epoch: leaves steps after the warmup for the decay


def apply_dev_run(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A reduced copy of `config` (pure); for a sweep config every group inherits the reduction."""
    config = config.copy_and_resolve_references()
    train_images = TRAIN_BATCHES * largest_batch_size(config)
    folds = int(config.data.num_folds)
    if folds > 1:  # each fold trains on (k - 1) / k of the pool and validates on the rest
        config.data.train_limit = math.ceil(train_images * folds / (folds - 1)) + folds
    else:
        val_images = VAL_IMAGES if config.data.val_size else 0
        config.data.val_size = float(val_images)
        config.data.train_limit = train_images + val_images
    config.data.test_limit = TEST_IMAGES
    config.eval_batch_size = min(int(config.eval_batch_size), EVAL_BATCH_SIZE)
    scale = 1.0 / config.num_epochs  # schedules keep their shape, squeezed into one epoch
    config.optim.warmup_epochs = min(float(config.optim.warmup_epochs) * scale, MAX_WARMUP_FRACTION)
    step_epochs = config.optim.step_epochs
    step_epochs = step_epochs if isinstance(step_epochs, (tuple, list)) else (step_epochs,)
    config.optim.step_epochs = tuple(float(e) * scale for e in step_epochs)
    config.num_epochs = 1
    config.num_seeds = min(int(config.num_seeds), MAX_SEEDS)
    return config


def largest_batch_size(config: ml_collections.ConfigDict) -> int:
    """The batch size, or the largest one a sweep tries: every group needs its batches."""
    sizes = [int(config.batch_size)]
    for field, values in (config.get("sweep") or {}).get("axes", ()):
        if field == "batch_size":
            sizes += [int(v) for v in values]
    return max(sizes)
