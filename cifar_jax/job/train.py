"""The loop that drives a job's program (`program.py`): epochs of time-bounded chunks, evaluation,
checkpoints, resume, interrupts, and the files a job writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cifar_jax.core import execution, memory
from cifar_jax.job import best_runs, chunks, interrupts
from cifar_jax.core import metrics
from cifar_jax.job import progress
from cifar_jax.job.program import Program, RunSetup, setup_runs, trace_job, zero_sums
from cifar_jax.job import results
from cifar_jax.core import runs
from cifar_jax.core import step
from cifar_jax.job import storage, validation
from cifar_jax.job import workdir as workdir_lib
from cifar_jax.job.checkpoint import Checkpoints, warm_start_state
from cifar_jax.errors import CheckpointError, Interrupted
from cifar_jax.core.splits import RunSubsets, examples_for, run_subsets, run_train_index


def train_epoch(program: Program, state: step.TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                epoch: int, train_index: jax.Array | None = None,
                on_chunk: Callable[[int, step.TrainState, step.EpochSums], bool | None] | None = None,
                start: int = 0, sums: step.EpochSums | None = None, clock: chunks.ChunkClock | None = None
                ) -> tuple[step.TrainState, step.EpochSums, int]:
    """Runs one epoch (from step `start`, adding to `sums` when resuming inside it) as calls of
    the compiled step chunk, each bounded in time by `clock` (one per job; a fresh one by
    default); returns the state, the sums and the steps done, all steps finished.

    `train_index` (runs, n) gives each run its own training examples (cross-validation folds);
    by default every run trains on all of `images`. `on_chunk(steps_done, state, sums)` runs
    between chunks (progress, mid-epoch checkpoints); returning True stops the epoch there."""
    clock = clock or chunks.ChunkClock(program.plan, program.steps_per_epoch)
    clock.start_epoch()
    num_runs = state.step.shape[0]
    if train_index is None:
        train_index = np.broadcast_to(np.arange(images.shape[0], dtype=np.int32), (num_runs, images.shape[0]))
    batches = program.epoch_batches(state, jnp.int32(epoch), train_index)  # a function of the data key and epoch
    sums = zero_sums(num_runs, program.layer_names) if sums is None else sums
    while start < program.steps_per_epoch:
        length = clock.next_length(program.steps_per_epoch - start)
        started = clock.before_call(length)
        state, sums = program.train_steps(state, hparams, images, labels, batches, jnp.int32(start), sums,
                                          length=length)
        clock.after_call(length, started, state.step)
        start += length
        if on_chunk is not None and on_chunk(start, state, sums) and start < program.steps_per_epoch:
            break
    clock.wait()
    return state, sums, start


class EvaluationStopped(Exception):
    """A stop request seen between evaluation batches (`score_split`'s `should_stop`)."""


def score_split(program: Program, state: step.TrainState, hparams: dict, images: jax.Array, labels: jax.Array,
                batch_size: int, *, subsets: RunSubsets | None = None, return_probs: bool = False,
                should_stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
    """Per-run loss, accuracy, macro-F1, per-class accuracy and confusion matrix on one split.

    `subsets` restricts each run to its own examples (its held-out fold), gathered per run: batches
    then run over the longest subset, not the split, and probabilities come in subset order.
    `should_stop()`, asked before each batch (the same count on every process), ends the scoring
    with `EvaluationStopped`: a long evaluation then never outlasts a preemption's grace period."""
    num_runs = state.step.shape[0]
    confusion, loss_sum, probs = None, None, []
    length = images.shape[0] if subsets is None else subsets.index.shape[1]
    for start in range(0, length, batch_size):
        if should_stop is not None and should_stop():
            raise EvaluationStopped
        batch = slice(start, start + batch_size)
        if subsets is None:  # a batch's weights: what `memory.py` counts
            batch_confusion, batch_loss, batch_probs = program.eval_batch(
                state, hparams, images[batch], labels[batch],
                np.ones((num_runs, min(batch_size, length - start)), np.float32))
        else:
            batch_confusion, batch_loss, batch_probs = program.eval_subset_batch(
                state, hparams, images, labels, subsets.index[:, batch], subsets.weights[:, batch])
        confusion, loss_sum = ((batch_confusion, batch_loss) if confusion is None  # one batch: nothing to add
                               else (confusion + batch_confusion, loss_sum + batch_loss))
        if return_probs:
            probs.append(batch_probs)
    confusion, loss_sum = (np.asarray(x) for x in execution.replicate((confusion, loss_sum), program.plan))
    result = metrics.classification_metrics(confusion, loss_sum)
    result["confusion"] = confusion
    if return_probs:
        result["probs"] = np.concatenate([np.asarray(p) for p in execution.replicate(probs, program.plan)], axis=1)
    return result


class ResumePoint(NamedTuple):
    """Where a job continues: the state after the last checkpointed step, the records so far and,
    for a mid-epoch checkpoint, the step within the epoch and that epoch's sums."""

    state: step.TrainState
    history: list[dict]
    diverged_by_epoch: list[list[bool]]
    wall_time_s: float
    step: int = 0
    sums: step.EpochSums | None = None
    steps_per_call: int | None = None  # the chunk length the run decided (job/chunks.py), if it did
    best_weights: Any = None  # each run's best weights so far, when the checkpoint holds them (job/best_runs.py)


def _initial_state(setup: RunSetup, config: ml_collections.ConfigDict, workdir: str) -> step.TrainState:
    """A fresh state; with `init_from`, the parameters and batch statistics of that workdir's latest
    checkpoint (run i from run i), so a chain of jobs can continue one model without re-initializing
    it (study 002's leaky k-fold). Optimizer, step, dropout and data streams stay fresh."""
    state = setup.init()
    if not config.get("init_from"):
        return state
    path = storage.resolve(workdir, config.init_from)  # relative: to this run's workdir
    source = setup.on_devices(warm_start_state(path, setup.checkpoint_like(), config.checkpoint.best_metric,
                                               setup.num_runs))
    batch_stats = jax.tree.map(lambda fresh, old: old if isinstance(fresh, nnx.BatchStat) else fresh,
                               state.model_state, source.model_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return state._replace(params=source.params, model_state=batch_stats)


def _resume_point(setup: RunSetup, checkpoints: Checkpoints, workdir: str,
                  fresh: Callable[[], step.TrainState]) -> ResumePoint:
    """The newest usable checkpoint, a whole epoch's or a mid-epoch one, placed on the devices,
    with the records of its epochs (from metrics.jsonl); `fresh()` when there is none."""
    like = setup.checkpoint_like()
    restored = checkpoints.restore(like, num_runs=setup.num_runs)
    partial = checkpoints.restore_partial(like, num_runs=setup.num_runs)
    whole_epochs = 0 if restored is None else _epochs_done(restored[2])

    def best_weights(epoch: int | None) -> Any:  # None: the mid-epoch checkpoint's
        saved = checkpoints.restore_best_weights((like.params, like.model_state), epoch, setup.num_runs)
        return None if saved is None else setup.on_devices(saved)
    if partial is not None and partial[1]["epoch"] > whole_epochs:
        state, meta = partial
        return ResumePoint(setup.on_devices(state), *_history(meta, workdir, setup.grid), meta["wall_time_s"],
                           meta["step"], setup.on_devices(step.EpochSums.from_json(meta["sums"])),
                           meta.get("steps_per_call"), best_weights(None))
    if restored is None:
        return ResumePoint(fresh(), [], [], 0.0)
    epoch, state, meta = restored
    return ResumePoint(setup.on_devices(state), *_history(meta, workdir, setup.grid), meta["wall_time_s"],
                       steps_per_call=meta.get("steps_per_call"), best_weights=best_weights(epoch))


def _epochs_done(meta: dict) -> int:
    """Whole epochs a checkpoint holds ('history' in the meta of earlier versions' checkpoints)."""
    return int(meta["epochs_done"]) if "epochs_done" in meta else len(meta["history"])


def _history(meta: dict, workdir: str, grid: runs.RunGrid) -> tuple[list[dict], list[list[bool]]]:
    """(records, diverged per epoch) of the whole epochs before a checkpoint: read back from
    metrics.jsonl, so a checkpoint's meta stays the same size however many epochs ran."""
    if "history" in meta:  # written by an earlier version
        return meta["history"], meta["diverged"]
    return progress.read_history(workdir, int(meta["epochs_done"]), grid.ids())


def _chunk_hook(setup: RunSetup, checkpoints: Checkpoints, loop: progress.TrainingLog, stop: interrupts.StopFlag,
                epoch: int, records: Callable[[], dict], best: best_runs.BestRuns | None
                ) -> Callable[[int, step.TrainState, step.EpochSums], bool]:
    """Between chunks: progress, and a mid-epoch checkpoint when the run is asked to stop or
    `checkpoint.every_minutes` have passed since the last save; returns whether to stop."""
    show = loop.chunk_callback(epoch)
    every_s = 60.0 * float(loop.config.checkpoint.every_minutes)

    def hook(done: int, state: step.TrainState, sums: step.EpochSums) -> bool:
        show(done, state)
        if loop.config.get("log_step_metrics", False):
            loop.step_metrics(epoch, done, setup.real_runs(sums))
        halt, save = stop.poll(save_due=0 < every_s <= time.time() - checkpoints.last_save_time)
        if halt or save:
            _save_partial(setup, checkpoints, epoch, done, state, sums, records, best)
        return halt
    return hook


def _save_partial(setup: RunSetup, checkpoints: Checkpoints, epoch: int, done: int, state: step.TrainState,
                  sums: step.EpochSums, records: Callable[[], dict], best: best_runs.BestRuns | None) -> None:
    """A mid-epoch checkpoint after `done` steps of `epoch` (with `done` = the whole epoch, a resume
    only evaluates it)."""
    checkpoints.save_partial((epoch - 1) * setup.program.steps_per_epoch + done, state,
                             {**records(), "epoch": epoch, "step": done, "sums": setup.real_runs(sums).to_json()},
                             num_runs=setup.num_runs, best_weights=None if best is None else best.weights)


def _refuse_another_dtype(workdir: str, plan: execution.ExecutionPlan) -> None:
    """A resume must compute in the dtype the run began with (e.g. not float32 on CPU, then
    bfloat16 on a GPU), or its numbers belong to no one setting."""
    stored = (workdir_lib.load_json(workdir, workdir_lib.DATA_FILE) or {}).get("plan") or {}
    if stored.get("compute_dtype", plan.compute_dtype) != plan.compute_dtype:
        raise CheckpointError(f"{workdir} was trained in {stored['compute_dtype']} ({stored.get('backend')}), this "
                              f"job would resume it in {plan.compute_dtype} ({plan.backend}); set "
                              f"--config.execution.compute_dtype={stored['compute_dtype']}, or use another --workdir")


def _best_runs(config: ml_collections.ConfigDict, setup: RunSetup, checkpoints: Checkpoints, evals: dict,
               resume: ResumePoint) -> best_runs.BestRuns | None:
    """Each run's best weights, kept while the test split waits for the end of the job (None when
    test is scored every epoch, or there is none); a resumed job's from its checkpoints."""
    if not best_runs.keeps_best(config, evals):
        return None
    metric = config.checkpoint.best_metric
    best = best_runs.BestRuns(metric if metric in results.BEST_METRICS else "val_accuracy", setup.on_devices)
    best.resume(resume.history, resume.state, lambda epoch: checkpoints.restore(
        setup.checkpoint_like(), which=str(epoch), num_runs=setup.num_runs)[1], saved=resume.best_weights)
    return best


def _claim(config: ml_collections.ConfigDict, workdir: str, setup: RunSetup, splits: Any,
           primary: bool) -> tuple[Checkpoints, ResumePoint]:
    """Takes the workdir: refuses another config's run or another dtype (writing nothing), finds
    where to resume (an unusable checkpoint or init_from source fails here, config.json
    untouched), then writes config.json and data.json (with the resolved plan)."""
    def make_room() -> None:  # refuses a workdir of another config, writing nothing
        workdir_lib.make_room(workdir, config)
        _refuse_another_dtype(workdir, setup.program.plan)
    execution.primary_decides(make_room)  # every process ends with process 0's refusal
    checkpoints = Checkpoints(workdir, keep=config.checkpoint.keep, best_metric=config.checkpoint.best_metric)
    resume = _resume_point(setup, checkpoints, workdir, lambda: _initial_state(setup, config, workdir))
    if primary:
        workdir_lib.write_run_files(workdir, config, {"image_shape": list(splits.image_shape), "num_train":
                                                      splits.num_train, "class_names": list(splits.class_names),
                                                      "plan": execution.plan_record(setup.program.plan)})
    return checkpoints, resume


def job_data(config: ml_collections.ConfigDict, splits: Any) -> memory.JobData:
    """What the job keeps on each device beside its runs' state (`memory.py`): every split and
    fold index once, each run's fold index and validation subset, its best-epoch weights."""
    arrays = {id(leaf): leaf for leaf in jax.tree.leaves((splits.train, splits.eval, splits.fold_train_index,
                                                          splits.fold_val_mask))}
    per_run = 0 if splits.fold_train_index is None else (  # its fold's training index, its val subset
        execution.tree_bytes(splits.fold_train_index[0]) + execution.tree_bytes(run_subsets(splits.fold_val_mask)) //
        splits.fold_val_mask.shape[0])
    keeps = best_runs.keeps_best(config, splits.eval)
    return memory.JobData(shared=execution.tree_bytes(list(arrays.values())), per_run=per_run,
                          keeps_best=keeps, restores=keeps or bool(config.get("init_from")))


def _first_eval_batch(splits: Any, eval_batch_size: int) -> int:
    """The size of the first evaluation batch `score_split` will call with: what `trace_job`
    traces, so that trace is the one the first evaluation reuses (a small split is one short batch)."""
    first = next(iter(splits.eval.values()), None)  # validation, scored first every epoch
    return eval_batch_size if first is None else min(eval_batch_size, len(first.labels))


def _placed_data(splits: Any, setup: RunSetup) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
    """Training images and labels, each run's training index and the evaluation splits (examples,
    each run's own examples with k folds: `RunSubsets`), on the devices."""
    plan = setup.program.plan
    images, labels = execution.replicate(tuple(splits.train), plan)
    evals = {name: (execution.replicate(tuple(examples), plan),
                    None if weights is None else setup.on_devices(run_subsets(weights)))
             for name, (examples, weights) in ((n, examples_for(splits, setup.grid, n)) for n in splits.eval)}
    return images, labels, setup.on_devices(run_train_index(splits, setup.grid)), evals


def _epoch_record(config: ml_collections.ConfigDict, setup: RunSetup, state: step.TrainState, sums: step.EpochSums,
                  evals: dict, epoch: int, stop: interrupts.StopFlag) -> tuple[dict, np.ndarray]:
    """A finished epoch's record (training sums and the splits scored this epoch, per real run) and
    which runs have diverged; `EvaluationStopped` where `stop` is raised before the scoring ends."""
    plan = setup.program.plan
    scores = {name: setup.real_runs(score_split(setup.program, state, setup.hparams, *evals[name][0],
                                                plan.eval_batch_size, subsets=evals[name][1],
                                                should_stop=lambda: stop.poll()[0]))
              for name in best_runs.splits_to_score(config, evals, epoch)}
    diverged = np.asarray(setup.real_runs(state.diverged))
    return results.epoch_record(setup.real_runs(sums)._asdict(), scores, diverged), diverged


def _stop_mid_epoch(checkpoints: Any, loop: progress.TrainingLog, stop: Any, epoch: int, done: int) -> None:
    """Ends a job that a signal stopped inside an epoch: its last checkpoint is flushed, and the
    exit status tells a scheduler to requeue (`errors.Interrupted`)."""
    checkpoints.wait()
    checkpoints.close()
    loop.close()
    raise Interrupted(f"{stop.reason()} at epoch {epoch} step {done}; rerun the same command to resume",
                      stop.exit_code())


def _best_test(config: ml_collections.ConfigDict, setup: Any, best: Any, state: Any, evals: dict[str, Any],
               history: list[dict[str, Any]]) -> Any:
    """Test scores at each run's best epoch, from the weights kept on the device (None without them):
    the final epoch's record where that was the best, one test pass otherwise."""
    if best is None:
        return None
    return best.best_scores(
        config.num_epochs, {name: history[-1][f"test_{name}"] for name in results.RECORDED_EVAL_METRICS},
        lambda: setup.real_runs(score_split(setup.program, best.state(state), setup.hparams, *evals["test"][0],
                                            setup.program.plan.eval_batch_size, subsets=evals["test"][1])))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) every run of `config`, evaluating each epoch, checkpointing, and writing
    metrics.jsonl, TensorBoard events and results.json into `workdir`. SIGTERM or Ctrl-C stop it
    at the next step boundary with a checkpoint (`errors.Interrupted`)."""
    splits, grid = validation.load_checked_splits(config)  # before touching the workdir: a bad start changes nothing
    setup = setup_runs(config, splits.image_shape, len(splits.class_names), splits.num_train, grid=grid,
                       abstract=True, data=job_data(config, splits))
    trace_job(setup, splits.image_shape, splits.num_train,
              _first_eval_batch(splits, setup.program.plan.eval_batch_size),
              None if splits.fold_val_mask is None else splits.train.images.shape[0])
    primary = execution.is_primary()  # process 0 writes everything but the checkpoints
    checkpoints, resume = _claim(config, workdir, setup, splits, primary)
    loop = progress.TrainingLog(workdir, config, setup.grid, splits, setup.program, is_primary=primary)
    state, history, diverged_by_epoch = resume.state, resume.history, resume.diverged_by_epoch
    loop.start(resumed_after=len(history), step=resume.step)
    session_start = time.time()
    plan = setup.program.plan
    clock = chunks.ChunkClock(plan, setup.program.steps_per_epoch,  # a resume keeps its decided chunk
                              resume.steps_per_call if plan.chunk_seconds else None)
    # What resume needs besides metrics.jsonl (written before each checkpoint): constant in size.
    records = lambda: {"epochs_done": len(history),  # noqa: E731
                       "wall_time_s": resume.wall_time_s + time.time() - session_start,
                       "steps_per_call": clock.decided}
    images, labels, train_index, evals = _placed_data(splits, setup)
    del splits  # on several devices the placed data are copies: the default device keeps one (`memory.py`)
    resumed_epoch = len(history) + 1  # resume.step and resume.sums belong to it
    loop.compiling(clock)
    best = _best_runs(config, setup, checkpoints, evals, resume)
    with interrupts.stop_on_signals(float(config.execution.get("stop_grace_s", interrupts.DEFAULT_GRACE_S))) as stop:
        for epoch in range(resumed_epoch, config.num_epochs + 1):
            start, sums = (resume.step, resume.sums) if epoch == resumed_epoch else (0, None)
            hook = _chunk_hook(setup, checkpoints, loop, stop, epoch, records, best)
            state, sums, done = train_epoch(setup.program, state, setup.hparams, images, labels, epoch, train_index,
                                            hook, start, sums, clock)
            loop.trained(clock)
            if done < setup.program.steps_per_epoch:
                _stop_mid_epoch(checkpoints, loop, stop, epoch, done)
            try:
                record, diverged = _epoch_record(config, setup, state, sums, evals, epoch, stop)
            except EvaluationStopped:  # trained, not yet scored: a resume scores it
                _save_partial(setup, checkpoints, epoch, done, state, sums, records, best)
                _stop_mid_epoch(checkpoints, loop, stop, epoch, done)
            history.append(results.jsonable(record))
            diverged_by_epoch.append(diverged.tolist())
            if best is not None:
                best.update(epoch, record, state)
            loop.end_epoch(epoch, record, history, diverged_by_epoch)  # metrics.jsonl before the checkpoint
            if epoch % config.checkpoint_every_epochs == 0 or epoch == config.num_epochs:
                checkpoints.save(epoch, state, records(), results.mean_over_runs(record, config.checkpoint.best_metric),
                                 num_runs=setup.num_runs,  # sharded and padded as trained: nothing gathered
                                 best_weights=None if best is None else best.weights)
                checkpoints.drop_partial()
    checkpoints.wait()
    checkpoints.close()
    summary = results.summarize_results(config, setup.grid, history, np.asarray(diverged_by_epoch[-1]),
                                        records()["wall_time_s"], _best_test(config, setup, best, state, evals, history))
    summary["plan"] = execution.plan_record(plan)
    if primary:
        workdir_lib.write_json_atomic(os.path.join(workdir, "results.json"), summary)
    loop.finish(summary, checkpoints)
    return summary
