"""cifar_jax vs PyTorch, side by side in one process: training throughput over runs.

    python scripts/benchmark.py --quick          # < 2 minutes on 2 cores: the target cells
    python scripts/benchmark.py --json runs/benchmark.json   # the full table

A cell is a model (the tutorial LeNet, the fifth study's CNN, a reduced block CNN), a batch size
and its runs: S seeds, or a grid of 4 learning rates x 2 seeds (`GRID_RATES`). Per cell:

- model-images/s = images x runs / second of training, steady state (after compilation and a
  warm-up epoch), over a fixed number of steps on synthetic CIFAR-sized uint8 arrays (the data
  values do not change the work). cifar_jax runs what users run: `train.setup_runs` (the
  config's Program: all runs in one compiled program, runs of a data stream sharing its batch,
  the execution defaults of `cifar_jax.core.execution`) driven by `train.train_epoch`.
- the candidates: the same program with `execution.runs_per_group` = 1 and = every run (the full
  run adds 2 and 4) and with the whole batch at once (`execution.microbatches` = 1; in --quick
  only in one-run cells), so the auto choices are checked against them in the same cell; in a
  grid cell also the flat vmap (every run in one vmap on its own stream, as before streams).
- PyTorch two ways: sequential (`torch_reference.ThroughputRunner`: the runs one after another,
  as the studies' code would; model-images/s is one model's images/s) and, for several runs,
  torch.func (`torch_reference.FuncThroughputRunner`: `vmap(grad(functional_call))` over the
  stacked models on a shared batch). Ratios are to the faster of the two in the cell.
- the ratio on wall time and on CPU time (images per CPU-second of the whole process, all
  threads): on a machine shared with other work the wall-clock ratio swings with the load, the
  CPU-time ratio much less. A cell is timed in rounds: one repeat of every PyTorch way, then one
  epoch of every cifar_jax program of the cell, so all of them sample the same stretches of time
  and a slow spell of the machine costs every column, not one; best of the rounds (median kept).
- compile time of cifar_jax's training step (XLA, cold: no persistent cache), peak host memory
  (RSS of this process sampled during the cell; the process holds both frameworks), and model
  FLOP utilisation: the training FLOPs per image from XLA's cost analysis of the train step
  (lowered with XLA convolutions, one seed, one step: the model's arithmetic, not the extra
  multiply-adds of a faster formulation) x model-images/s / the peak f32 FLOP/s of a large
  matmul measured in the same run.

It ends with one line per target (`<target>: <ratio>x  met` or `MISSED`).

Threads: both frameworks use the same `--threads` cores. The process is pinned to that many
cores (`os.sched_setaffinity`) before JAX starts, which sizes XLA:CPU's thread pool, and PyTorch
gets `torch.set_num_threads(threads)`. Default: every core (2 on the development machines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def _pin_threads(threads: int) -> int:
    cores = sorted(os.sched_getaffinity(0))
    threads = min(threads or len(cores), len(cores))
    os.sched_setaffinity(0, cores[:threads])
    return threads


# Parsed before JAX is imported: the affinity decides XLA:CPU's thread pool size.
PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--quick", action="store_true", help="the target cells only, few steps (< 2 min on 2 cores)")
PARSER.add_argument("--threads", type=int, default=0, help="cores for both frameworks (0 = all)")
PARSER.add_argument("--models", default="lenet,cnn_bn_dropout,block_small")
PARSER.add_argument("--batch_sizes", default="4,128")
PARSER.add_argument("--seeds", default="1,8,32")
PARSER.add_argument("--repeats", type=int, default=5, help="timed rounds per cell (best and median kept)")
PARSER.add_argument("--scale", type=float, default=1.0, help="multiplies the timed steps per cell")
PARSER.add_argument("--max_memory_gb", type=float, default=0.0,
                    help="skip a cell whose compiled step needs more (0 = 40%% of RAM)")
PARSER.add_argument("--no_torch", action="store_true", help="cifar_jax only")
PARSER.add_argument("--json", default="", help="write the results here (full run default: benchmark.json)")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    THREADS = _pin_threads(ARGS.threads)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cifar_jax.core import execution
from cifar_jax.job import train  # noqa: E402
from configs import block_cnn, cnn_bn_dropout, lenet_tutorial  # noqa: E402

# ----------------------------------------------------------------------------- models


def _block_small():
    config = block_cnn.get_config()
    config.model.block_channels = (16, 32, 64)
    config.model.num_branches = 2
    return config


MODELS = {
    # name: (cifar_jax config, torch_reference model name, its kwargs, description)
    "lenet": (lenet_tutorial.get_config, "lenet", {}, "tutorial LeNet (62k params)"),
    "cnn_bn_dropout": (cnn_bn_dropout.get_config, "cnn_bn_dropout", {}, "fifth study's CNN, BN + dropout (158k)"),
    "block_small": (_block_small, "block_cnn", dict(channels=(16, 32, 64), branches=2),
                    "block CNN 3-16-32-64, 2 branches (106k)"),
}
# Model-images per timed epoch (full run), so every cell takes a few seconds.
IMAGES_PER_EPOCH = {"lenet": 24_000, "cnn_bn_dropout": 2_000, "block_small": 8_000}
# A grid cell: 4 learning rates x 2 seeds, one program (runs of a seed share their data stream).
GRID_RATES = (5e-4, 1e-3, 2e-3, 4e-3)


@dataclasses.dataclass(frozen=True)
class Cell:
    model: str
    batch_size: int
    seeds: int
    rates: tuple[float, ...] = ()  # a learning-rate grid (the recipe's rate scaled), or none

    @property
    def runs(self) -> int:
        return self.seeds * max(len(self.rates), 1)

    @property
    def name(self) -> str:
        runs = f"grid {len(self.rates)} lr x {self.seeds} seeds" if self.rates else f"{self.seeds} seeds"
        return f"{self.model} b{self.batch_size} {runs}"


QUICK_CELLS = [Cell("lenet", 128, 1), Cell("lenet", 128, 8), Cell("lenet", 128, 2, GRID_RATES),
               Cell("lenet", 4, 8), Cell("lenet", 4, 2, GRID_RATES), Cell("cnn_bn_dropout", 128, 1)]


def jax_config(model: str, batch_size: int, num_seeds: int, rates: tuple[float, ...] = ()):
    config = MODELS[model][0]()
    config.batch_size = batch_size
    config.num_seeds = num_seeds
    if rates:
        config.hparam_grid.learning_rate = tuple(rates)
    # Throughput of the model's training step: no augmentation (the PyTorch loop has none).
    config.augment.crop_padding = 0
    config.augment.flip = False
    return config


def timed_steps(model: str, batch_size: int, num_runs: int, quick: bool, scale: float) -> int:
    """Steps per timed epoch for about IMAGES_PER_EPOCH model-images: a multiple of 10 (CPU's
    automatic step chunks then divide the epoch: one compiled program), at least 10, and at least
    20 for several runs: a timed epoch starts with caches the other framework's turn evicted,
    which cost LeNet's 8-run, 10-step epochs (0.3 s) ~4% against a following epoch."""
    steps = IMAGES_PER_EPOCH[model] * (0.3 if quick else 1.0) * scale / (batch_size * num_runs)
    return min(2000, max(10 if num_runs == 1 else 20, int(round(steps / 10.0)) * 10))


# ----------------------------------------------------------------------------- measurement helpers


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        import psutil
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def peak_matmul_flops(n: int = 2048, repeats: int = 7) -> float:
    """Best f32 FLOP/s of an n x n x n matmul in XLA: the ceiling for MFU."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _train_steps_call(program, state, hparams, images, labels):
    """The (abstract) arguments of the first `train_steps` call of an epoch, as `train_epoch` makes them."""
    num_runs = state.step.shape[0]
    train_index = jnp.broadcast_to(jnp.arange(images.shape[0]), (num_runs, images.shape[0]))
    batches = program.epoch_batches(state, jnp.int32(1), train_index)
    args = (state, hparams, images, labels, batches, jnp.int32(0), train.zero_sums(num_runs, program.layer_names))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args), {"length": program.plan.steps_per_call}


def _synthetic(num_images: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, num_images).astype(np.int32))
    return images, labels


def _setup(config, num_train: int):
    setup = train.setup_runs(config, (32, 32, 3), 10, num_train)
    return setup.program, setup.hparams, setup.state


_FLOPS_CACHE: dict[tuple[str, int], float] = {}


def train_flops_per_image(model: str, batch_size: int) -> float:
    """Training FLOPs per image: XLA's cost analysis of one step of one seed with XLA
    convolutions (lowered, not compiled: the model's arithmetic)."""
    key = (model, batch_size)
    if key not in _FLOPS_CACHE:
        config = jax_config(model, batch_size, 1)
        config.model.conv_impl = "xla"
        config.execution.steps_per_call = 1
        images, labels = _synthetic(2 * batch_size)
        program, hparams, state = _setup(config, 2 * batch_size)
        args, kwargs = _train_steps_call(program, state, hparams, images, labels)
        cost = program.train_steps.lower(*args, **kwargs).cost_analysis()
        _FLOPS_CACHE[key] = float(cost["flops"]) / batch_size
    return _FLOPS_CACHE[key]


class TorchCell:
    """One PyTorch way of training a cell's runs, timed a few steps at a time (~`seconds` per
    repeat) between cifar_jax's timed epochs, so both frameworks see the same machine load.
    `runner` is a `torch_reference.ThroughputRunner` (one model: the runs train one after
    another, so model-images/s is one model's images/s) or a `FuncThroughputRunner` (all runs at
    once with torch.func); `models_per_step` is 1 or the number of stacked models."""

    def __init__(self, way: str, runner, batch_size: int, models_per_step: int, seconds: float):
        self.way, self.runner = way, runner
        self.images_per_step = batch_size * models_per_step
        self.runner.steps(2)  # warm-up: allocator, oneDNN primitives
        wall, _ = self.runner.steps(2)
        self.steps_per_repeat = int(min(2000, max(3, seconds * 2 / wall)))
        self.walls, self.cpus = [], []

    def repeat(self):
        wall, cpu = self.runner.steps(self.steps_per_repeat)
        self.walls.append(wall)
        self.cpus.append(cpu)

    def result(self, since: int = 0) -> dict:
        import torch
        images = self.steps_per_repeat * self.images_per_step
        walls, cpus = self.walls[since:], self.cpus[since:]
        return {"framework": "pytorch", "way": self.way, "steps": self.steps_per_repeat, "repeats": len(walls),
                "images_per_s": images / min(walls), "images_per_s_median": images / statistics.median(walls),
                "images_per_cpu_s": images / statistics.median(cpus), "torch": torch.__version__}


def torch_ways(cell: Cell, threads: int, seconds: float, sequential: dict) -> dict[str, TorchCell]:
    """PyTorch's ways of training the cell's runs: one after another (a runner shared by the cells
    of a model and batch size, in `sequential`) and, for several runs, torch.func."""
    import torch_reference

    _, name, kwargs, _ = MODELS[cell.model]
    key = (cell.model, cell.batch_size)
    if key not in sequential:
        sequential[key] = TorchCell("sequential", torch_reference.ThroughputRunner(
            name, cell.batch_size, threads=threads, **kwargs), cell.batch_size, 1, seconds)
    ways = {"sequential": sequential[key]}
    if cell.runs > 1:
        base_rate = torch_reference.RECIPES[name]["lr"]
        scales = [rate / base_rate for rate in cell.rates for _ in range(cell.seeds)] if cell.rates else None
        ways["torch.func"] = TorchCell("torch.func", torch_reference.FuncThroughputRunner(
            name, cell.batch_size, cell.runs, threads=threads, lr_scales=scales, **kwargs),
            cell.batch_size, cell.runs, seconds)
    return ways


def _program_variants(cell: Cell, quick: bool) -> dict[str, tuple[int, bool, int]]:
    """cifar_jax programs to time in a cell: name -> (execution.runs_per_group, data streams,
    execution.microbatches). 'auto' is what users get; 'group=G' and 'whole batch' (no
    microbatches; in --quick only in one-run cells, to stay under 2 minutes) are the candidates
    the auto choice is checked against; 'flat vmap' (grid cells) is every run in one vmap, each
    on its own stream."""
    variants = {"auto": (0, True, 0)}
    if cell.runs > 1:
        groups = (1, cell.runs) if quick else sorted({1, 2, 4, cell.runs} - {g for g in (2, 4) if g >= cell.runs})
        variants.update({f"group={g}": (g, True, 0) for g in groups})
    if not quick or cell.runs == 1:
        variants["whole batch"] = (0, True, 1)
    if cell.rates:
        variants["flat vmap"] = (cell.runs, False, 0)
    return variants


def _program(cell: Cell, runs_per_group: int, streams: bool, num_train: int, microbatches: int = 0):
    config = jax_config(cell.model, cell.batch_size, cell.seeds, cell.rates)
    config.execution.runs_per_group = runs_per_group
    config.execution.microbatches = microbatches
    program, hparams, state = _setup(config, num_train)
    return (program if streams else train.make_train(config, (32, 32, 3), 10, num_train)), hparams, state


class _TimedProgram:
    """One compiled cifar_jax program of a cell, warmed up, timed one epoch at a time."""

    def __init__(self, cell: Cell, variant: tuple[int, bool, int], images: jax.Array, labels: jax.Array):
        self.images, self.labels = images, labels
        runs_per_group, streams, microbatches = variant
        self.program, self.hparams, self.state = _program(cell, runs_per_group, streams, images.shape[0], microbatches)
        self.runs_per_group = min(self.program.plan.runs_per_group or cell.runs, cell.runs)
        self.stream_size = None if self.program.stream_layout is None else self.program.stream_layout.stream_size
        self.epoch, self.walls, self.cpus = 1, [], []

    def compile(self):
        """Compiles the epoch's step chunk (the timed calls reuse it): seconds and bytes it needs."""
        args, kwargs = _train_steps_call(self.program, self.state, self.hparams, self.images, self.labels)
        start = time.perf_counter()
        compiled = self.program.train_steps.lower(*args, **kwargs).compile()
        self.compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        self.step_bytes = (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
                           if memory is not None else 0)

    def warm_up(self):
        self.state, _, _ = train.train_epoch(self.program, self.state, self.hparams, self.images, self.labels, 1)
        jax.block_until_ready(self.state.step)

    def timed_epoch(self):
        self.epoch += 1
        wall, cpu = time.perf_counter(), time.process_time()
        self.state, sums, _ = train.train_epoch(self.program, self.state, self.hparams, self.images, self.labels,
                                                self.epoch)
        jax.block_until_ready((self.state.step, sums))
        self.walls.append(time.perf_counter() - wall)
        self.cpus.append(time.process_time() - cpu)


def jax_cell(cell: Cell, steps: int, repeats: int, max_bytes: float, quick: bool,
             torch_cells: dict[str, TorchCell]) -> dict:
    """cifar_jax's programs of one cell (`_program_variants`), each compiled and warmed up, then
    timed in rounds: each round runs one repeat of every PyTorch way and one epoch of every
    program, so all of them sample the same stretches of a noisy machine (a slow spell then
    costs every column, not one). Returns the cell's row: per program and per PyTorch way,
    model-images/s, best and median over the rounds."""
    num_train = steps * cell.batch_size
    images, labels = _synthetic(num_train)
    torch_since = {way: len(t.walls) for way, t in torch_cells.items()}
    programs, timed, measured = {}, {}, {}  # measured: (runs per group, streams, microbatches) -> the variant
    for variant, setting in _program_variants(cell, quick).items():
        with PeakRSS() as rss:
            candidate = _TimedProgram(cell, setting, images, labels)
            same = (candidate.runs_per_group, candidate.stream_size is not None, candidate.program.plan.microbatches)
            if same in measured:  # the same program as a variant already timed (e.g. auto = group=1)
                programs[variant] = {"same_as": measured[same]}
                continue
            candidate.compile()
            result = {"steps": steps, "steps_per_call": candidate.program.plan.steps_per_call,
                      "runs_per_group": candidate.runs_per_group, "streams": candidate.stream_size,
                      "microbatches": candidate.program.plan.microbatches,
                      "compile_s": candidate.compile_s, "step_memory_gb": candidate.step_bytes / 2**30}
            if max_bytes and candidate.step_bytes > max_bytes:
                result["skipped"] = (f"the compiled step needs {candidate.step_bytes / 2**30:.1f} GB > "
                                     f"{max_bytes / 2**30:.1f} GB")
            else:
                candidate.warm_up()
                timed[variant] = candidate
            measured[same] = variant
        programs[variant] = {**result, "peak_rss_mb": rss.mb}
    for _ in range(repeats):
        for torch_cell in torch_cells.values():
            torch_cell.repeat()
        for candidate in timed.values():
            candidate.timed_epoch()
    model_images = num_train * cell.runs
    for variant, candidate in timed.items():
        programs[variant].update(images_per_s=model_images / min(candidate.walls),
                                 images_per_s_median=model_images / statistics.median(candidate.walls),
                                 images_per_cpu_s=model_images / statistics.median(candidate.cpus))
    for variant, result in programs.items():
        if "same_as" in result:
            programs[variant] = {**programs[result["same_as"]], "same_as": result["same_as"]}
    row = {"cell": cell.name, "model": cell.model, "batch_size": cell.batch_size, "seeds": cell.seeds,
           "rates": list(cell.rates), "runs": cell.runs, "jax": programs,
           "torch": {way: t.result(torch_since[way]) for way, t in torch_cells.items()}}
    if "skipped" not in programs["auto"]:
        row["flops_per_image"] = train_flops_per_image(cell.model, cell.batch_size)
    return row


# ----------------------------------------------------------------------------- report


def _fmt(value, spec=",.0f", missing="-"):
    return missing if value is None else format(value, spec)


def _rate(result: dict | None) -> float | None:
    return None if result is None or "skipped" in result else result["images_per_s"]


def best_torch(row: dict) -> tuple[str, float] | None:
    """PyTorch's faster way in the cell (model-images/s), or None without PyTorch."""
    ways = [(way, t["images_per_s"]) for way, t in row["torch"].items()]
    return max(ways, key=lambda w: w[1]) if ways else None


def best_candidate(row: dict) -> tuple[str, float]:
    """The fastest measured grouping of the streamed program (the auto choice among them)."""
    timed = [(name, _rate(r)) for name, r in row["jax"].items() if name != "flat vmap" and _rate(r)]
    return max(timed, key=lambda c: c[1])


def table(rows: list[dict], peak: float) -> str:
    head = ("| cell | cifar_jax model-img/s (auto) | runs/group | PyTorch sequential | torch.func | ratio to the faster "
            "PyTorch | ratio (CPU time) | candidates model-img/s (runs/group; whole batch) | flat vmap | compile s | peak RSS MB | MFU |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        auto = row["jax"]["auto"]
        if "skipped" in auto:
            lines.append(f"| {row['cell']} | skipped: {auto['skipped']} |" + " |" * (head.count("|") - 3))
            continue
        fastest = best_torch(row)
        ratio = auto["images_per_s"] / fastest[1] if fastest else None
        cpu_ratio = (auto["images_per_cpu_s"] / row["torch"][fastest[0]]["images_per_cpu_s"]) if fastest else None
        candidates = ", ".join(f"{name.removeprefix('group=')}: {_fmt(_rate(r))}" for name, r in row["jax"].items()
                               if name not in ("auto", "flat vmap") and _rate(r))
        mfu = row["flops_per_image"] * auto["images_per_s"] / peak
        lines.append(
            f"| {row['cell']} | {_fmt(auto['images_per_s'])} | {auto['runs_per_group']} "
            f"| {_fmt(_rate(row['torch'].get('sequential')))} | {_fmt(_rate(row['torch'].get('torch.func')))} "
            f"| {_fmt(ratio, '.2f')} | {_fmt(cpu_ratio, '.2f')} | {candidates or '-'} "
            f"| {_fmt(_rate(row['jax'].get('flat vmap')))} | {auto['compile_s']:.1f} | {auto['peak_rss_mb']:,.0f} "
            f"| {100 * mfu:.0f}% |")
    return "\n".join(lines)


def _verdict(text: str, value: float, goal: float) -> str:
    return f"{text}: {value:.2f}x  {'met' if value >= goal else 'MISSED'}"


def targets(rows: list[dict], peak: float) -> list[str]:
    """One line per target of the performance issue that this run's cells can check."""
    cells = {(r["model"], r["batch_size"], r["seeds"], bool(r["rates"])): r for r in rows
             if "skipped" not in r["jax"]["auto"]}
    out = []

    def to_torch(key):
        row = cells.get(key)
        fastest = row and best_torch(row)
        return row["jax"]["auto"]["images_per_s"] / fastest[1] if fastest else None

    for key, goal, text in [
            (("lenet", 128, 2, True), 1.5, "LeNet grid (4 lr x 2 seeds), batch 128: >= 1.5x PyTorch"),
            (("lenet", 128, 8, False), 1.0, "LeNet, batch 128, 8 seeds: >= 1x PyTorch"),
            (("lenet", 128, 1, False), 1.0, "LeNet, batch 128, 1 seed: >= 1x PyTorch"),
            (("cnn_bn_dropout", 128, 1, False), 1.0, "fifth study's CNN, batch 128, 1 seed: >= 1x PyTorch"),
            (("lenet", 4, 8, False), 2.0, "LeNet, batch 4, 8 seeds: >= 2x PyTorch"),
            (("lenet", 4, 2, True), 2.0, "LeNet grid (4 lr x 2 seeds), batch 4: >= 2x PyTorch")]:
        value = to_torch(key)
        if value is not None:
            out.append(_verdict(text, value, goal))
    grid = cells.get(("lenet", 128, 2, True))
    if grid and _rate(grid["jax"].get("flat vmap")):
        out.append(_verdict("LeNet grid (4 lr x 2 seeds), batch 128: >= 1.3x the flat vmap",
                            grid["jax"]["auto"]["images_per_s"] / grid["jax"]["flat vmap"]["images_per_s"], 1.3))
    grouped = [(row["jax"]["auto"]["images_per_s"] / best_candidate(row)[1], row["cell"]) for row in cells.values()
               if any(name not in ("auto", "flat vmap") and _rate(r) for name, r in row["jax"].items())]
    if grouped:
        worst, where = min(grouped)
        out.append(_verdict(f"auto grouping and microbatches within 10% of the best candidate in every cell "
                            f"(worst: {where})",
                            worst, 0.9))
    one, many = cells.get(("lenet", 128, 1, False)), cells.get(("lenet", 128, 32, False))
    if one and many:
        out.append(_verdict("LeNet, batch 128, 32 seeds >= 1.5x the 1-seed model-img/s",
                            many["jax"]["auto"]["images_per_s"] / one["jax"]["auto"]["images_per_s"], 1.5))
    return out


def _cell_line(row: dict) -> str:
    auto = row["jax"]["auto"]
    if "skipped" in auto:
        return f"  {row['cell']:32s} skipped: {auto['skipped']}"
    jax_side = "  ".join(f"{name} {_fmt(_rate(r))}" for name, r in row["jax"].items())
    torch_side = "  ".join(f"{way} {_fmt(_rate(t))}" for way, t in row["torch"].items())
    return (f"  {row['cell']:32s} cifar_jax {jax_side} model-img/s ({auto['steps']} steps, "
            f"{auto['steps_per_call']}/call, {auto['runs_per_group']} runs/group, streams of "
            f"{auto['streams'] or 1}, {auto['microbatches']} microbatches, compile {auto['compile_s']:.1f} s)" + (f"  | pytorch {torch_side}" if torch_side else ""))


def main(args, threads: int) -> dict:
    start = time.time()
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; use {', '.join(MODELS)}")
    if args.quick:
        cells = [c for c in QUICK_CELLS if c.model in models]
    else:
        cells = [Cell(m, int(b), int(s)) for m in models for b in args.batch_sizes.split(",")
                 for s in args.seeds.split(",")]
        cells += [Cell(m, int(b), 2, GRID_RATES) for m in models for b in args.batch_sizes.split(",")]
    repeats = 4 if args.quick else args.repeats  # best of 4 rounds: the shared machine has slow spells
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    max_bytes = args.max_memory_gb * 2**30 if args.max_memory_gb else 0.4 * total_ram

    print(f"cifar_jax benchmark: jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), "
          f"{threads} threads, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"execution defaults: conv_impl={'patches' if jax.default_backend() == 'cpu' else 'xla'}, steps_per_call=auto "
          f"(CPU chunk {execution.CPU_STEPS_PER_CALL}), runs_per_group=auto (CPU: up to "
          f"{execution.CPU_STEP_BYTES_PER_GROUP / 2**20:.0f} MiB of step activations), microbatches=auto (CPU: "
          f"the same budget, models without batch norm or dropout), buffer donation on")
    peak = peak_matmul_flops()
    print(f"peak: {peak / 1e9:.1f} GFLOP/s (f32 2048^3 matmul, XLA, {threads} threads)", flush=True)

    sequential: dict[tuple[str, int], TorchCell] = {}
    rows = []
    for cell in cells:
        ways = {} if args.no_torch else torch_ways(cell, threads, 0.5 if args.quick else 1.5, sequential)
        steps = timed_steps(cell.model, cell.batch_size, cell.runs, args.quick, args.scale)
        row = jax_cell(cell, steps, repeats, max_bytes, args.quick, ways)
        print(_cell_line(row), flush=True)
        rows.append(row)

    print()
    print("model-images/s = images x runs / second. PyTorch sequential trains the runs one after another (one "
          "model's images/s); torch.func trains them at once on a shared batch. Ratios are to the faster of the two.")
    print(f"MFU = XLA's training FLOPs per image x cifar_jax model-img/s / {peak / 1e9:.1f} GFLOP/s "
          "(matmul peak, this run).")
    print(table(rows, peak))
    print()
    for line in targets(rows, peak):
        print(line)
    elapsed = time.time() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{'quick' if args.quick else 'full'} benchmark: {elapsed:.0f} s, peak RSS of the process {peak_rss:,.0f} MB")
    result = {"quick": args.quick, "threads": threads, "peak_flops": peak, "jax": jax.__version__,
              "backend": jax.default_backend(), "rows": rows, "targets": targets(rows, peak),
              "seconds": elapsed, "load_average": os.getloadavg()}
    path = args.json or ("" if args.quick else "benchmark.json")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2, default=float)
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main(ARGS, THREADS)
