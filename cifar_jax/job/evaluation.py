"""Evaluate any checkpoint of a workdir: per run, across seeds, and as a seed ensemble.

`load(workdir)` rebuilds the program from the workdir's own config and restores every run, so a
notebook can inspect models without the training data; `evaluate(loaded, split)` scores them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cifar_jax.data import catalog
from cifar_jax.core import execution
from cifar_jax.core import metrics
from cifar_jax.core import runs
from cifar_jax.core import splits as splits_lib
from cifar_jax.core import step
from cifar_jax.job import train
from cifar_jax.job import program as program_lib
from cifar_jax.job import storage
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.job.checkpoint import Checkpoints
from cifar_jax.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """Every run of a workdir restored from one checkpoint, on this process's devices."""

    config: ml_collections.ConfigDict
    setup: program_lib.RunSetup  # the program, the grid, per-run hparams (padded to the device count)
    state: step.TrainState  # padded like `setup.hparams`
    epoch: int
    class_names: tuple[str, ...]

    @property
    def program(self) -> program_lib.Program:
        return self.setup.program

    @property
    def grid(self) -> runs.RunGrid:
        return self.setup.grid

    @property
    def hparams(self) -> dict[str, jax.Array]:
        return self.setup.real_runs(self.setup.hparams)

    def model(self, run: int) -> FloatInputModel:
        """Run `run`'s model in eval mode, as a plain NNX module. It takes *normalized* float
        images (`splits.to_model_input(images, loaded.hparams['mean'][run], ...)`); for raw uint8
        images use `predict`."""
        one = jax.tree.map(lambda leaf: leaf[run], (self.state.params, self.state.model_state))
        return FloatInputModel(nnx.merge(self.program.eval_graph, *one))

    def score(self, images: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> dict[str, np.ndarray]:
        """`train.score_split` of every real run, with probabilities (runs, n, classes); `weights`
        (runs, n) restrict each run to its own examples, scored alone (other rows' probs are 0)."""
        subsets = None if weights is None else splits_lib.run_subsets(weights)
        result = self.setup.real_runs(train.score_split(
            self.program, self.state, self.setup.hparams, jnp.asarray(images), jnp.asarray(labels, jnp.int32),
            self.config.eval_batch_size, subsets=self.setup.on_devices(subsets), return_probs=True))
        if subsets is not None:
            result["probs"] = _in_split_order(result["probs"], subsets, len(labels))
        return result

    def predict(self, images: np.ndarray, run: int | None = None) -> np.ndarray:
        """Class probabilities for raw uint8 NHWC images, the run's own normalization applied:
        shape (runs, n, classes), or (n, classes) for one `run`."""
        images = jnp.asarray(images)
        if images.dtype != jnp.uint8:
            raise TypeError(f"predict takes raw uint8 images as loaded from the data set, got {images.dtype}")
        probs = self.score(images, jnp.zeros(images.shape[0], jnp.int32))["probs"]
        return probs if run is None else probs[run]


def _in_split_order(probs: np.ndarray, subsets: splits_lib.RunSubsets, num_examples: int) -> np.ndarray:
    """Subset-ordered probabilities (runs, m, classes) put back at their examples (runs, n, classes)."""
    placed = np.zeros((probs.shape[0], num_examples, probs.shape[-1]), probs.dtype)
    for run, (index, weights) in enumerate(zip(np.asarray(subsets.index), np.asarray(subsets.weights))):
        kept = weights != 0  # not the padding
        placed[run, index[kept]] = probs[run][kept]
    return placed


class FloatInputModel(nnx.Module):
    """A run's model that refuses raw uint8 images: fed those instead of normalized floats it
    would answer silently and wrongly (85% instead of 89.5% on Fashion-MNIST)."""

    def __init__(self, model: nnx.Module):
        self.model = model

    def __call__(self, images: jax.Array) -> jax.Array:
        if jnp.asarray(images).dtype == jnp.uint8:
            raise TypeError("model(i) takes normalized float images; for raw uint8 images use "
                            "loaded.predict(images), or splits.to_model_input(images, mean, std) first")
        return self.model(images)


# Data fields that only choose the images an evaluation scores (another test set), never the
# run's own carve: eval may change them besides the resumable fields.
EVAL_DATA_FIELDS = ("data.test_limit",)


def check_trained_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a config that differs from the run's own config.json in anything but fields that
    may change after training (eval.*, execution.*, num_epochs, data.dir, data.test_limit, ...): another
    data.val_size or data.seed would score "val" on training images, other normalization
    constants would score another input."""
    stored = workdir_lib.load_json(workdir, workdir_lib.CONFIG_FILE)
    if stored is None:
        return  # `load` reports the missing run
    current = workdir_lib.config_to_dict(config)
    differing = [name for name in workdir_lib.differing_fields(stored, current) if name not in EVAL_DATA_FIELDS]
    if differing:
        raise ConfigError(f"--config differs from {os.path.join(workdir, workdir_lib.CONFIG_FILE)} in "
                          f"{workdir_lib.describe_differences(stored, current, differing, shown=3)}; evaluate "
                          "with the run's own config: drop --config and any override outside eval.*")


def load(workdir: str, checkpoint: str = "latest", config: ml_collections.ConfigDict | None = None) -> LoadedRun:
    """Restores all runs of `workdir` from checkpoint 'latest', 'best' or an epoch number."""
    config = config or workdir_lib.load_config(workdir)
    check_trained_config(workdir, config)
    data_meta = workdir_lib.load_json(workdir, workdir_lib.DATA_FILE)
    if data_meta is None:
        raise CheckpointError(f"{workdir} has no trained run yet (no {workdir_lib.DATA_FILE}); train it first")
    setup = program_lib.setup_runs(config, tuple(data_meta["image_shape"]), len(data_meta["class_names"]),
                             data_meta["num_train"], abstract=True)
    checkpoints = Checkpoints(workdir, keep=config.checkpoint.keep, best_metric=config.checkpoint.best_metric,
                              read_only=True)
    restored = checkpoints.restore(setup.checkpoint_like(), which=str(checkpoint), num_runs=setup.num_runs)
    checkpoints.close()
    if restored is None:
        raise CheckpointError(f"{workdir} has no readable '{checkpoint}' checkpoint")
    epoch, state, _ = restored
    return LoadedRun(config=config, setup=setup, state=setup.on_devices(state), epoch=epoch,
                     class_names=tuple(data_meta["class_names"]))


def _ensemble_accuracy(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Accuracy of the members' mean probabilities, over the examples some member was scored on
    (with k folds, each example's own fold)."""
    counted = weights.sum(axis=0)
    mean_probs = (probs * weights[..., None]).sum(axis=0) / np.maximum(counted, 1)[:, None]
    covered = counted > 0
    return float(np.mean(mean_probs[covered].argmax(-1) == labels[covered]))


def evaluate(loaded: LoadedRun, images: jax.Array, labels: jax.Array, weights: jax.Array | None = None
             ) -> dict[str, Any]:
    """Per-run metrics, their mean ± std per setting, and each setting's seed-ensemble accuracy;
    `weights` (runs, n) restrict each run to its own examples (k-fold validation)."""
    result = loaded.score(images, labels, weights)
    probs = result.pop("probs")
    grid, labels = loaded.grid, np.asarray(labels)
    weights = np.ones(probs.shape[:2]) if weights is None else np.asarray(weights)
    per_setting = []
    for s, setting in enumerate(grid.settings):
        members = grid.setting_index == s
        per_setting.append({
            **setting,
            "ensemble_accuracy": _ensemble_accuracy(probs[members], labels, weights[members]),
            **{name: metrics.summarize(result[name][members]) for name in ("accuracy", "loss", "macro_f1")},
        })
    return {
        "epoch": loaded.epoch,
        "num_images": int(len(labels)),
        "class_names": list(loaded.class_names),
        "runs": [{**ids, **metrics.per_run_rows({k: v for k, v in result.items() if k != "confusion"}, r),
                  "confusion": result["confusion"][r].astype(int).tolist()}
                 for r, ids in enumerate(grid.ids())],
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
    """`--mode=eval`: restores the chosen checkpoint, scores the chosen split (the examples training
    held out, per fold with k folds), writes W/eval/*.json."""
    split = splits_lib.check_split(config.eval.split)
    check_trained_config(workdir, config)  # before the data: a different carve would score the wrong images
    grid = runs.make_run_grid(config, catalog.IMAGE_SHAPES[catalog.check_name(config.data.name)][-1])
    examples, weights = splits_lib.eval_examples(config.data, grid, split)  # a missing data set fails first
    loaded = load(workdir, str(config.eval.checkpoint), config)
    report = evaluate(loaded, *examples, weights)
    if not execution.is_primary():  # every process evaluates (collectives); process 0 prints and writes
        return report
    print(format_report(report, split), flush=True)
    storage.makedirs(os.path.join(workdir, "eval"))
    workdir_lib.write_json_atomic(
        os.path.join(workdir, "eval", f"{config.eval.checkpoint}-epoch{loaded.epoch}-{split}.json"), report)
    return report
