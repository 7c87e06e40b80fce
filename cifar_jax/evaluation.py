"""Evaluate any checkpoint of a workdir: per run, across seeds, and as a seed ensemble.

`load(workdir)` rebuilds the program from the workdir's own config and restores every run, so a
notebook can inspect models without the training data; `evaluate(loaded, split)` scores them.
"""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cifar_jax import data, metrics, train
from cifar_jax import workdir as workdir_lib
from cifar_jax.checkpoint import Checkpoints
from cifar_jax.errors import CheckpointError, DataError

SPLITS = ("test", "val", "train")


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """Every run of a workdir restored from one checkpoint."""

    config: ml_collections.ConfigDict
    program: train.Program
    grid: train.RunGrid
    hparams: dict[str, jax.Array]
    state: train.TrainState
    epoch: int
    class_names: tuple[str, ...]

    def model(self, run: int) -> nnx.Module:
        """Run `run`'s model in eval mode, as a plain NNX module."""
        one = jax.tree.map(lambda leaf: leaf[run], (self.state.params, self.state.model_state))
        return nnx.merge(self.program.eval_graph, *one)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its config.json)."""
    stored = workdir_lib.load_json(workdir, workdir_lib.CONFIG_FILE)
    if stored is None:
        raise CheckpointError(f"{workdir} holds no trained run (no {workdir_lib.CONFIG_FILE}); "
                              "train first with --mode=train or point --workdir at a run")
    return ml_collections.ConfigDict(stored)


def load(workdir: str, checkpoint: str = "latest", config: ml_collections.ConfigDict | None = None) -> LoadedRun:
    """Restores all runs of `workdir` from checkpoint 'latest', 'best' or an epoch number."""
    config = config or load_config(workdir)
    data_meta = workdir_lib.load_json(workdir, workdir_lib.DATA_FILE)
    if data_meta is None:
        raise CheckpointError(f"{workdir} has no trained run yet (no {workdir_lib.DATA_FILE}); train it first")
    image_shape = tuple(data_meta["image_shape"])
    grid = train.make_run_grid(config, image_shape[-1])
    program = train.make_train(config, image_shape, len(data_meta["class_names"]), data_meta["num_train"])
    hparams = jax.tree.map(jnp.asarray, grid.hparams)
    fresh = program.init(train.run_keys(config.seed, grid.seed_index, grid.fold_index), hparams)
    checkpoints = Checkpoints(workdir, keep=config.checkpoint.keep, best_metric=config.checkpoint.best_metric,
                              read_only=True)
    restored = checkpoints.restore(fresh, which=str(checkpoint))
    checkpoints.close()
    if restored is None:
        raise CheckpointError(f"{workdir} has no readable '{checkpoint}' checkpoint")
    epoch, state, _ = restored
    return LoadedRun(config=config, program=program, grid=grid, hparams=hparams, state=state, epoch=epoch,
                     class_names=tuple(data_meta["class_names"]))


def split_arrays(data_config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of one split, carving validation exactly as training did."""
    if split not in SPLITS:
        raise DataError(f"eval.split={split!r} is unknown; use one of {', '.join(SPLITS)}")
    dataset = data.load_dataset(data_config)
    if split == "test":
        if dataset.test_images is None:
            raise DataError(f"{dataset.source} has no test split; point --config.data.dir at a directory "
                            "with test.npz (or the official test files), or use --config.eval.split=val")
        return dataset.test_images, dataset.test_labels
    train_idx, val_idx = data.validation_split(dataset.train_labels, data_config.val_size, data_config.seed)
    index = val_idx if split == "val" else train_idx
    return dataset.train_images[index], dataset.train_labels[index]


def evaluate(loaded: LoadedRun, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Per-run metrics, their mean ± std per setting, and each setting's seed-ensemble accuracy."""
    result = train.evaluate(loaded.program, loaded.state, loaded.hparams, jnp.asarray(images),
                            jnp.asarray(labels, jnp.int32), loaded.config.eval_batch_size, return_probs=True)
    probs = result.pop("probs")
    grid = loaded.grid
    labels_run = train.run_labels(grid)
    per_setting = []
    for s, setting in enumerate(grid.settings):
        members = grid.setting_index == s
        ensemble = probs[members].mean(axis=0).argmax(-1)
        per_setting.append({
            **setting,
            "ensemble_accuracy": float(np.mean(ensemble == np.asarray(labels))),
            **{name: metrics.summarize(result[name][members]) for name in ("accuracy", "loss", "macro_f1")},
        })
    return {
        "epoch": loaded.epoch,
        "num_images": int(len(labels)),
        "class_names": list(loaded.class_names),
        "runs": [{**label, **metrics.per_run_rows({k: v for k, v in result.items() if k != "confusion"}, r),
                  "confusion": result["confusion"][r].astype(int).tolist()}
                 for r, label in enumerate(labels_run)],
        "settings": per_setting,
    }


def format_report(report: dict[str, Any], split: str) -> str:
    """The human-readable lines `--mode=eval` prints."""
    lines = [f"{split}: {report['num_images']} images, checkpoint of epoch {report['epoch']}"]
    for run in report["runs"]:
        lines.append(f"  run {run['run']} (seed {run['seed_index']}, setting {run['setting']}): "
                     f"acc {run['accuracy'] * 100:.2f}%  loss {run['loss']:.4f}  macro-F1 {run['macro_f1']:.4f}")
    for s, setting in enumerate(report["settings"]):
        acc = setting["accuracy"]
        lines.append(f"  setting {s}: acc {acc['mean'] * 100:.2f} ± {acc['std'] * 100:.2f}% over {acc['n']} seeds"
                     f"  (95% CI {acc['ci_low'] * 100:.2f}-{acc['ci_high'] * 100:.2f})"
                     f"  seed ensemble {setting['ensemble_accuracy'] * 100:.2f}%")
    return "\n".join(lines)


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`--mode=eval`: restores the chosen checkpoint, scores the chosen split, writes W/eval/*.json."""
    split = config.eval.split
    images, labels = split_arrays(config.data, split)
    loaded = load(workdir, str(config.eval.checkpoint), config)
    report = evaluate(loaded, images, labels)
    print(format_report(report, split), flush=True)
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    workdir_lib.write_json_atomic(
        os.path.join(workdir, "eval", f"{config.eval.checkpoint}-epoch{loaded.epoch}-{split}.json"), report)
    return report
