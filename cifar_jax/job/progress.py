"""What a training job tells its user and its workdir while it runs.

The first line says what will run, then "compiling ..." until the first step runs; inside an epoch a progress line (steps, images/s, epoch and
run ETA) appears every `progress_every_s` seconds (redrawn in place on a terminal, a plain line in
logs); each epoch appends to metrics.jsonl and TensorBoard and prints one line; the end prints
the per-setting summary and where the results went.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cifar_jax.core import metrics
from cifar_jax.core.memory import mib
from cifar_jax.job import results, storage
from cifar_jax.core.runs import RunGrid
from cifar_jax.core.splits import Splits
from cifar_jax.errors import CheckpointError

METRICS_FILE = "metrics.jsonl"
STEPS_FILE = "steps.jsonl"  # with log_step_metrics: the dying-ReLU diagnostics per chunk of steps


def clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0)))


def devices_line() -> str:
    devices = jax.devices()
    kinds = sorted({d.platform for d in devices})
    processes = jax.process_count()
    return (f"{len(devices)} device{'s' if len(devices) > 1 else ''} ({', '.join(kinds)}) in {processes} "
            f"process{'es' if processes > 1 else ''}")


def describe_job(config: ml_collections.ConfigDict, grid: RunGrid, splits: Splits, workdir: str,
                 plan: Any = None) -> str:
    """The first line of a run: config, runs (seeds x settings x folds), devices, data, workdir."""
    parts = [f"{grid.num_seeds} seeds", f"{len(grid.settings)} settings"] + (
        [f"{grid.num_folds} folds"] if grid.num_folds > 1 else [])
    sizes = ", ".join(f"{name} {examples.images.shape[0]:,}" for name, examples in
                      {"train": splits.train, **splits.eval}.items())
    return (f"{config.get('name', '') or 'config'}: {grid.num_runs} runs ({' x '.join(parts)}) on "
            f"{devices_line()}; {config.data.name} {sizes}; {config.num_epochs} epochs; workdir {workdir}"
            + memory_text(plan))


def memory_text(plan: Any) -> str:
    """Where runs were sized to memory (accelerators): a run's bytes and how runs were grouped."""
    if plan is None or plan.memory is None:
        return ""
    groups = ("all runs at once" if plan.runs_per_group is None else
              f"{plan.runs_per_group} run{'s' if plan.runs_per_group > 1 else ''} at a time "
              f"({mib(plan.memory.grouped)} more a run while grouped)")
    return f"; {plan.memory.describe()}; {groups}, evaluation batch {plan.eval_batch_size}"


def epoch_line(epoch: int, num_epochs: int, record: dict, diverged: np.ndarray, images_per_s: float,
               eta_s: float, wall_s: float) -> str:
    """One epoch's line: loss, accuracy, training images/s (compiles, evaluation and checkpoints
    excluded), the job's wall time so far and its ETA."""
    split = "val" if "val_accuracy" in record else ("test" if "test_accuracy" in record else None)
    parts = [f"epoch {epoch}/{num_epochs}", f"loss {np.nanmean(record['train_loss']):.3f}"]
    if split:
        parts.append(f"{split} acc {metrics.format_mean_std(record[f'{split}_accuracy'])}%"
                     f" ({record[f'{split}_accuracy'].size} runs)")
    if diverged.any():
        parts.append(f"{int(diverged.sum())} diverged")
    parts += [f"{images_per_s:,.0f} img/s training", f"wall {clock(wall_s)}", f"ETA {clock(eta_s)}"]
    return "  ".join(parts)


def session_epochs(epoch: int, steps_done: int, steps_per_epoch: int, first_epoch: int, resumed_step: int) -> float:
    """Epochs of training this session has done, `steps_done` into `epoch`, for its ETAs: a resume
    inside `first_epoch` did not train that epoch's first `resumed_step` steps (counting them
    made a resumed job's ETAs far too short)."""
    return epoch - first_epoch + (steps_done - resumed_step) / steps_per_epoch


def summary_lines(summary: dict[str, Any], paths: dict[str, str]) -> list[str]:
    """Final and best-epoch metrics per setting (mean ± 95% CI over seeds) and where they are."""
    lines = []
    names = [n for n in ("val_accuracy", "best_val_accuracy", "test_accuracy") if n in summary["summary"]]
    for s, setting in enumerate(summary["settings"] or [{}]):
        label = ", ".join(f"{k}={v:g}" for k, v in setting.items()) or "all runs"
        stats = [_stat_text(name, summary["summary"][name][s]) for name in names]
        lines.append(f"  {label}: " + "; ".join(stats))
    lines += [f"  {name}: {path}" for name, path in paths.items() if path]
    return ["done: " + (f"{summary['num_runs']} runs, {summary['num_epochs']} epochs, "
                        f"{clock(summary['wall_time_s'])} wall")] + lines


def _stat_text(name: str, stats: dict[str, float]) -> str:
    if not stats["n"]:
        return f"{name} n/a"
    interval = "" if stats["n"] < 2 else f" (95% CI {stats['ci_low'] * 100:.2f}-{stats['ci_high'] * 100:.2f})"
    return f"{name} {stats['mean'] * 100:.2f}%{interval} n={stats['n']}"


class ProgressLine:
    """A progress report at most every `every_s` seconds; in place on a terminal."""

    def __init__(self, every_s: float, stream: TextIO | None = None):
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.last = time.time()
        self.drawn = False

    def due(self) -> bool:
        return self.every_s > 0 and time.time() - self.last >= self.every_s

    def show(self, text: str) -> None:
        self.last = time.time()
        if self.live:
            self.stream.write("\r\033[K" + text)
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.drawn = False


class TrainingLog:
    """Console lines, metrics.jsonl and TensorBoard of one training job."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, grid: RunGrid, splits: Splits,
                 program: Any, is_primary: bool = True):
        self.workdir, self.config, self.grid = workdir, config, grid
        self.tensorboard_dir = (os.path.join(workdir, "tensorboard")  # None: no event files (no TensorFlow)
                                if config.get("tensorboard", True) else None)
        self.is_primary = is_primary
        self.images_per_epoch = program.steps_per_epoch * config.batch_size
        self.steps_per_epoch = program.steps_per_epoch
        self.first_line = describe_job(config, grid, splits, workdir, program.plan)
        self.line = ProgressLine(float(config.get("progress_every_s", 5.0)))
        self.writer = None
        self._step_sums: tuple[int, dict[str, np.ndarray]] | None = None  # (epoch, its sums at the last line)
        self._pending_steps: tuple[int, int, Any] | None = None  # the chunk whose line is not written yet
        self._step_lines: list[str] = []  # steps.jsonl lines not written yet (an object store's: until the epoch ends)
        self.clock: Any = None  # the job's chunks.ChunkClock: training time apart from compiles
        self.train_images_per_s = 0.0  # the last epoch's, training time only

    def start(self, resumed_after: int, step: int = 0) -> None:
        self.session_start = time.time()
        self.first_epoch = resumed_after + 1
        self.resumed_step = step  # steps of the first epoch trained before this session
        self.epochs_done = 0.0
        if not self.is_primary:
            return
        print(self.first_line, flush=True)
        if resumed_after or step:
            inside = f", inside epoch {resumed_after + 1} at step {step}" if step else ""
            print(f"resuming {self.workdir} after epoch {resumed_after}{inside}", flush=True)
        if self.tensorboard_dir:
            from clu import metric_writers  # TensorFlow loads here, not when a config is read

            self.writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(self.tensorboard_dir))

    def compiling(self, clock: Any) -> None:
        """Before the first call: compiling the training step takes seconds to minutes."""
        self.clock = clock
        if self.is_primary:
            plan = clock.plan
            print(f"compiling the training step ({plan.compute_dtype}, {plan.conv_impl} convolutions, "
                  f"{clock.length} step{'s' if clock.length > 1 else ''} a call) ...", flush=True)

    def trained(self, clock: Any) -> None:
        """After an epoch's training calls: its images per second over training time only."""
        self.train_images_per_s = clock.images_per_s(self.config.batch_size * self.grid.num_runs)

    def _eta(self, epochs_left: float) -> float:
        done = max(time.time() - self.session_start, 1e-9)
        return done / max(self.epochs_done, 1e-9) * epochs_left

    def chunk_callback(self, epoch: int):
        """`train_epoch`'s between-chunk hook: when a report is due, waits for the chunk just
        queued (so the count is true) and prints steps, images/s and ETAs."""
        epoch_start = time.time()

        def on_chunk(steps_done: int, state: Any) -> None:
            if not (self.is_primary and self.line.due()) or steps_done >= self.steps_per_epoch:
                return
            jax.block_until_ready(state.step)
            elapsed = max(time.time() - epoch_start, 1e-9)
            trained_now = steps_done - (self.resumed_step if epoch == self.first_epoch else 0)
            self.epochs_done = session_epochs(epoch, steps_done, self.steps_per_epoch, self.first_epoch,
                                              self.resumed_step)
            images_per_step = self.config.batch_size * self.grid.num_runs
            measured = self.clock is not None and self.clock.trained_steps
            rate = self.clock.images_per_s(images_per_step) if measured else trained_now * images_per_step / elapsed
            epoch_eta = elapsed / max(trained_now, 1) * (self.steps_per_epoch - steps_done)
            epochs_left = self.config.num_epochs - epoch + 1 - steps_done / self.steps_per_epoch
            self.line.show(f"epoch {epoch}/{self.config.num_epochs}  step {steps_done}/{self.steps_per_epoch}  "
                           f"{rate:,.0f} img/s  epoch ETA {clock(epoch_eta)}  run ETA {clock(self._eta(epochs_left))}")
        self.epoch_start = epoch_start
        return on_chunk

    def step_metrics(self, epoch: int, steps_done: int, sums: Any) -> None:
        """One steps.jsonl line per compiled chunk of steps (`log_step_metrics`): each run's dead-ReLU
        fraction and per-layer gradient norms averaged over the steps since the previous line, so
        dying units can be watched within an epoch. `sums` are the real runs' epoch sums so far,
        copied and read one chunk late (`flush_steps` at the epoch's end), so the host never waits
        for the chunk just queued. A resume may repeat steps: readers keep the last line of a step
        (`read_steps`)."""
        if not self.is_primary:
            return
        pending = self._pending_steps
        self._pending_steps = (epoch, steps_done, jax.tree.map(lambda x: jnp.array(x, copy=True), sums))
        if pending:
            self._write_step_line(*pending)

    def flush_steps(self) -> None:
        """Writes the line of the last chunk `step_metrics` holds back, and the lines an object
        store's workdir collected."""
        pending, self._pending_steps = self._pending_steps, None
        if pending:
            self._write_step_line(*pending)
        self._write_step_lines()

    def _write_step_line(self, epoch: int, steps_done: int, sums: Any) -> None:
        now = {"steps": np.asarray(sums.steps, np.float64),
               "dead_relu_fraction": np.asarray(sums.dead_fraction, np.float64),
               **{f"grad_norm/{k}": np.asarray(v, np.float64) for k, v in sums.grad_norm.items()}}
        before = self._step_sums[1] if self._step_sums and self._step_sums[0] == epoch else {}
        self._step_sums = (epoch, now)
        span = np.maximum(now["steps"] - before.get("steps", 0.0), 1.0)
        record = {"epoch": epoch, "step": (epoch - 1) * self.steps_per_epoch + steps_done,
                  **{name: ((value - before.get(name, 0.0)) / span).tolist() for name, value in now.items()
                     if name != "steps"}}
        self._step_lines.append(json.dumps(record))
        if not storage.is_remote(self.workdir):  # an object store rewrites the file: once an epoch there
            self._write_step_lines()

    def _write_step_lines(self) -> None:
        lines, self._step_lines = self._step_lines, []
        if lines:
            storage.append_lines(os.path.join(self.workdir, STEPS_FILE), lines)

    def end_epoch(self, epoch: int, record: dict, history: list[dict], diverged_by_epoch: list[list[bool]]) -> None:
        self.epochs_done = session_epochs(epoch, self.steps_per_epoch, self.steps_per_epoch, self.first_epoch,
                                          self.resumed_step)
        if not self.is_primary:
            return
        self.flush_steps()
        self._write_metrics(epoch, history, diverged_by_epoch)
        if self.writer is not None:
            self.writer.write_scalars(epoch, {f"{name}/mean": float(np.nanmean(values))
                                              for name, values in record.items()
                                              if np.ndim(values) == 1 and not np.all(np.isnan(values))})
        self.line.clear()
        print(epoch_line(epoch, self.config.num_epochs, record, np.asarray(diverged_by_epoch[-1]),
                         self.train_images_per_s, self._eta(self.config.num_epochs - epoch),
                         time.time() - self.session_start), flush=True)

    def _write_metrics(self, epoch: int, history: list[dict], diverged_by_epoch: list[list[bool]]) -> None:
        """Appends the epoch's lines; the first epoch of a session rewrites the file from the
        checkpointed history, dropping lines of epochs trained after the checkpoint a resume used."""
        path = os.path.join(self.workdir, METRICS_FILE)
        ids = self.grid.ids()
        if epoch == self.first_epoch:
            lines = [line for e, (record, diverged) in enumerate(zip(history, diverged_by_epoch), start=1)
                     for line in results.metrics_lines(e, record, ids, diverged)]
            storage.write_text_atomic(path, "".join(line + "\n" for line in lines))
            return
        storage.append_lines(path, results.metrics_lines(epoch, history[-1], ids, diverged_by_epoch[-1]))

    def close(self) -> None:
        self.flush_steps()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self, summary: dict[str, Any], checkpoints: Any) -> None:
        self.close()
        if not self.is_primary:
            return
        best = checkpoints.best_path()
        paths = {"results": os.path.join(self.workdir, "results.json"),
                 "tensorboard": self.tensorboard_dir, "best checkpoint": best}
        print("\n".join(summary_lines(summary, paths)), flush=True)


def read_steps(workdir: str) -> list[dict[str, Any]]:
    """steps.jsonl's lines in step order, the last line of each step (a resume retrains steps); []
    without the file."""
    text = storage.read_text(os.path.join(workdir, STEPS_FILE)) or ""
    by_step = {record["step"]: record for record in map(json.loads, text.splitlines()) if record}
    return [by_step[step] for step in sorted(by_step)]


def read_history(workdir: str, epochs: int, run_ids: list[dict[str, Any]]) -> tuple[list[dict], list[list[bool]]]:
    """(per-epoch records, diverged per epoch) of epochs 1..`epochs`, read back from metrics.jsonl
    (`results.metrics_lines` inverted): what a resume continues, kept out of the checkpoints so
    their size does not grow with the epochs. A run's last line of an epoch wins."""
    path = os.path.join(workdir, METRICS_FILE)
    text = storage.read_text(path) or ""
    rows = {(row["epoch"], row["run"]): row for row in map(json.loads, text.splitlines()) if row}
    records, diverged = [], []
    for epoch in range(1, epochs + 1):
        epoch_rows = [rows.get((epoch, r)) for r in range(len(run_ids))]
        if None in epoch_rows:
            raise CheckpointError(f"{path} lacks runs of epoch {epoch}, which the checkpoint holds; restore the "
                                  "file, or retrain with --config.checkpoint.overwrite=True (the old run is moved aside)")
        names = [name for name in epoch_rows[0] if name not in ("epoch", "diverged", *run_ids[0])]
        records.append({name: [row[name] for row in epoch_rows] for name in names})
        diverged.append([bool(row["diverged"]) for row in epoch_rows])
    return records, diverged
