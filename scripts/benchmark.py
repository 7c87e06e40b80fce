"""cifar_jax vs PyTorch, side by side in one process: training throughput over runs.

    python scripts/benchmark.py --quick          # the target cells: 2-2.5 minutes on 2 cores (issue 27 asks < 2)
    python scripts/benchmark.py --models         # every study model at its study's batch sizes, 1 and 8 seeds
    python scripts/benchmark.py --e2e            # each study model's recipe as a whole job (benchmark_e2e.py)
    python scripts/benchmark.py                  # all of it; JSON in docs/benchmarks/<date>-full.json
    python scripts/benchmark.py --models --e2e --tiny   # does every cell run? (1 step, tiny jobs)

A cell is a model (`configs/study_models.py`: the five studies' models, and a reduced block CNN),
a batch size and its runs: S seeds, or a grid of 4 learning rates x 2 seeds (`GRID_RATES`). The
full block CNN of study 003 (~2 GFLOP per training image) is timed over 1 step a round, 2 rounds,
its auto program only. Per cell:

- model-images/s = images x runs / second of training, steady state (after compilation and a
  warm-up epoch), over a fixed number of steps on synthetic CIFAR-sized uint8 arrays (the data
  values do not change the work). cifar_jax runs what users run: `program_lib.setup_runs` (the
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
- compile time of cifar_jax's training step (XLA, cold: the run's persistent cache starts empty and
  no two candidates share a training step), peak host memory
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
import tempfile
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
PARSER.add_argument("--quick", action="store_true", help="the target cells only, few steps (2-2.5 min on 2 cores)")
PARSER.add_argument("--models", nargs="?", const="all", default=None,
                    help="only the study models' cells (comma list of configs/study_models.py names; default all)")
PARSER.add_argument("--e2e", nargs="?", const="all", default=None,
                    help="only the end-to-end cells: each study model's recipe as a whole job (comma list or all)")
PARSER.add_argument("--tiny", action="store_true",
                    help="a check that every cell runs: 1-2 steps, 1 round, tiny jobs (timings meaningless)")
PARSER.add_argument("--threads", type=int, default=0, help="cores for both frameworks (0 = all)")
PARSER.add_argument("--grid_models", default="lenet,cnn_bn_dropout,block_small",
                    help="the full run's seed and grid cells for these models")
PARSER.add_argument("--batch_sizes", default="4,128", help="the full run's batch sizes for --grid_models")
PARSER.add_argument("--seeds", default="1,8,32", help="the full run's seed counts for --grid_models")
PARSER.add_argument("--repeats", type=int, default=5, help="timed rounds per cell (best and median kept)")
PARSER.add_argument("--scale", type=float, default=1.0, help="multiplies the timed steps per cell")
PARSER.add_argument("--max_memory_gb", type=float, default=0.0,
                    help="skip a cell whose compiled step needs more (0 = 40%% of RAM)")
PARSER.add_argument("--no_torch", action="store_true", help="cifar_jax only")
PARSER.add_argument("--json", default="",
                    help="write the results here (full run default: docs/benchmarks/<date>-full.json)")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()
    THREADS = _pin_threads(ARGS.threads)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import benchmark_e2e  # noqa: E402
from benchmark_measure import PeakRSS, TorchCell, peak_matmul_flops  # noqa: E402
import benchmark_report  # noqa: E402
from cifar_jax.core import execution  # noqa: E402
from cifar_jax.data.catalog import IMAGE_SHAPES  # noqa: E402
from cifar_jax.job import chunks, train  # noqa: E402
from cifar_jax.job import program as program_lib
from cifar_jax.models import winograd  # noqa: E402
from configs import block_cnn, study_models  # noqa: E402

# ----------------------------------------------------------------------------- models


def _block_small():
    config = block_cnn.get_config()
    config.model.block_channels = (16, 32, 64)
    config.model.num_branches = 2
    return config


# The studies' models (configs/study_models.py) and the reduced block CNN of the earlier tables.
MODELS = {**study_models.MODELS, "block_small": study_models.StudyModel(
    "003", "block CNN 3-16-32-64, 2 branches", _block_small, (128,),
    study_models.block(3, 16, 2) + study_models.block(16, 32, 2) + study_models.block(32, 64, 2)
    + study_models.mlp_params((64, 256, 128, 64, 10)))}
# Model-images per timed epoch (full run), so every cell takes a few seconds; the full block CNN
# (~2 GFLOP per training image, ~15 s a step at batch 128 on 2 cores) gets one step per run.
IMAGES_PER_EPOCH = {"lenet": 24_000, "cnn3": 1_500, "fmnist_a1": 8_000, "fmnist_a2": 16_000, "fmnist_a3": 100_000,
                    "fmnist_a4": 6_000, "block_full": 128, "block_reduced": 16_000, "cnn_bn_dropout": 2_000,
                    "mlp": 40_000, "block_small": 8_000}
HEAVY = {"block_full"}  # few timed steps, 2 rounds, the auto program only
# A grid cell: 4 learning rates x 2 seeds, one program (runs of a seed share their data stream).
GRID_RATES = (5e-4, 1e-3, 2e-3, 4e-3)
MODEL_SEEDS = (1, 8)  # the --models cells: every study model at its batch sizes with 1 and 8 seeds


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


def model_cells(names: list[str]) -> list[Cell]:
    """Every named study model at each of its study's batch sizes, 1 and 8 seeds."""
    return [Cell(m, b, s) for m in names for b in MODELS[m].batch_sizes for s in MODEL_SEEDS]


def image_shape(model: str) -> tuple[int, int, int]:
    return IMAGE_SHAPES[MODELS[model].make_config().data.name]


def jax_config(model: str, batch_size: int, num_seeds: int, rates: tuple[float, ...] = ()):
    config = MODELS[model].config(batch_size)
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
    which cost LeNet's 8-run, 10-step epochs (0.3 s) ~4% against a following epoch. A HEAVY
    model: at least 1 step, no rounding (a step there is seconds)."""
    steps = IMAGES_PER_EPOCH[model] * (0.3 if quick else 1.0) * scale / (batch_size * num_runs)
    if model in HEAVY:
        return max(1, int(round(steps)))
    return min(2000, max(10 if num_runs == 1 else 20, int(round(steps / 10.0)) * 10))


# ----------------------------------------------------------------------------- measurement helpers


def _train_steps_call(program, state, hparams, images, labels):
    """The (abstract) arguments of the first `train_steps` call of an epoch, as `train_epoch` makes them."""
    num_runs = state.step.shape[0]
    train_index = jnp.broadcast_to(jnp.arange(images.shape[0]), (num_runs, images.shape[0]))
    batches = program.epoch_batches(state, jnp.int32(1), train_index)
    args = (state, hparams, images, labels, batches, jnp.int32(0), program_lib.zero_sums(num_runs, program.layer_names))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args), {"length": program.plan.steps_per_call}


def _synthetic(num_images: int, shape: tuple[int, int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.integers(0, 256, (num_images, *shape), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, num_images).astype(np.int32))
    return images, labels


def _setup(config, num_train: int):
    setup = program_lib.setup_runs(config, IMAGE_SHAPES[config.data.name], 10, num_train)
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
        images, labels = _synthetic(2 * batch_size, image_shape(model))
        program, hparams, state = _setup(config, 2 * batch_size)
        args, kwargs = _train_steps_call(program, state, hparams, images, labels)
        cost = program.train_steps.lower(*args, **kwargs).cost_analysis()
        _FLOPS_CACHE[key] = float(cost["flops"]) / batch_size
    return _FLOPS_CACHE[key]


def torch_ways(cell: Cell, threads: int, seconds: float, sequential: dict,
               max_bytes: float) -> tuple[dict[str, TorchCell], dict[str, str]]:
    """PyTorch's ways of training the cell's runs: one after another (a runner shared by the cells
    of a model and batch size, in `sequential`) and, for several runs, torch.func; and the ways
    skipped, with why. torch.func holds every model's activations at once: it runs only where
    runs x one model's step memory fits `max_bytes` (the full block CNN's 8 models at batch 128
    took this 24 GB machine out of memory)."""
    import torch
    import torch_reference

    if jax.default_backend() == "gpu" and torch.cuda.is_available():  # both frameworks on the same device
        torch_reference.DEVICE = torch.device("cuda")
    config = MODELS[cell.model].config(cell.batch_size)
    key = (cell.model, cell.batch_size)
    if key not in sequential:
        sequential[key] = TorchCell("sequential", torch_reference.ThroughputRunner(
            config, cell.batch_size, threads=threads), cell.batch_size, 1, seconds)
    ways, skipped = {"sequential": sequential[key]}, {}
    if cell.runs == 1:
        return ways, skipped
    func_bytes = cell.runs * sequential[key].runner.step_bytes()  # a forward pass: only where torch.func may run
    if max_bytes and func_bytes > max_bytes:
        skipped["torch.func"] = (f"{cell.runs} models hold ~{func_bytes / 2**30:.1f} GB for the backward "
                                 f"> {max_bytes / 2**30:.1f} GB")
    else:
        base_rate = config.optim.learning_rate
        scales = [rate / base_rate for rate in cell.rates for _ in range(cell.seeds)] if cell.rates else None
        ways["torch.func"] = TorchCell("torch.func", torch_reference.FuncThroughputRunner(
            config, cell.batch_size, cell.runs, threads=threads, lr_scales=scales),
            cell.batch_size, cell.runs, seconds)
    return ways, skipped


def _program_variants(cell: Cell, quick: bool) -> dict[str, tuple[int, bool, int]]:
    """cifar_jax programs to time in a cell: name -> (execution.runs_per_group, data streams,
    execution.microbatches). 'auto' is what users get; 'group=G' and 'whole batch' (no
    microbatches; in --quick only in one-run cells, to stay under 2 minutes) are the candidates
    the auto choice is checked against; 'flat vmap' (grid cells) is every run in one vmap, each
    on its own stream."""
    variants = {"auto": (0, True, 0)}
    if cell.model in HEAVY:
        return variants
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
    shape = IMAGE_SHAPES[config.data.name]
    return (program if streams else program_lib.make_train(config, shape, 10, num_train)), hparams, state


class _TimedProgram:
    """One compiled cifar_jax program of a cell, warmed up, timed one epoch at a time."""

    def __init__(self, cell: Cell, variant: tuple[int, bool, int], images: jax.Array, labels: jax.Array):
        self.images, self.labels = images, labels
        runs_per_group, streams, microbatches = variant
        self.program, self.hparams, self.state = _program(cell, runs_per_group, streams, images.shape[0], microbatches)
        self.runs_per_group = min(self.program.plan.runs_per_group or cell.runs, cell.runs)
        self.stream_size = None if self.program.stream_layout is None else self.program.stream_layout.stream_size
        self.epoch, self.walls, self.cpus = 1, [], []
        # one clock for every epoch, as in a job: the chunk length it decides on the first calls stays
        self.clock = chunks.ChunkClock(self.program.plan, self.program.steps_per_epoch)

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
        """The first three calls of an epoch, not all of it: the first run of the program and the
        clock's chunk length (it times the second call) are what a warm-up is for."""
        self.state, _, _ = train.train_epoch(self.program, self.state, self.hparams, self.images, self.labels, 1,
                                             clock=self.clock, on_chunk=lambda done, *_: done >= 3 * self.clock.length)
        jax.block_until_ready(self.state.step)

    def timed_epoch(self):
        self.epoch += 1
        wall, cpu = time.perf_counter(), time.process_time()
        self.state, sums, _ = train.train_epoch(self.program, self.state, self.hparams, self.images, self.labels,
                                                self.epoch, clock=self.clock)
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
    images, labels = _synthetic(num_train, image_shape(cell.model))
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
                result["steps_per_call"] = candidate.clock.length  # as decided on the first calls
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


def _names(text: str | None, known) -> list[str]:
    """A comma list of names ('all': every one of `known`), each checked."""
    names = list(known) if text in (None, "all") else [m for m in text.split(",") if m]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise SystemExit(f"error: unknown model {unknown[0]!r}; use one of {', '.join(known)}")
    return names


def plan_cells(args) -> tuple[list[Cell], list[str]]:
    """(the throughput cells, the models of the end-to-end cells) this invocation runs: --quick the
    target cells; --models / --e2e only those parts; the full run all three."""
    if args.quick:
        return QUICK_CELLS, []
    if args.models is not None or args.e2e is not None:
        cells = [] if args.models is None else model_cells(_names(args.models, study_models.MODELS))
        return cells, [] if args.e2e is None else _names(args.e2e, study_models.MODELS)
    grid_models = _names(args.grid_models, MODELS)
    sizes, seeds = [int(b) for b in args.batch_sizes.split(",")], [int(s) for s in args.seeds.split(",")]
    cells = [Cell(m, b, s) for m in grid_models for b in sizes for s in seeds]
    cells += [Cell(m, b, 2, GRID_RATES) for m in grid_models for b in sizes]
    cells += [c for c in model_cells(list(study_models.MODELS)) if c not in cells]
    return cells, list(study_models.MODELS)


def _header(threads: int) -> float:
    """Prints the machine and the execution defaults; returns the matmul peak FLOP/s."""
    print(f"cifar_jax benchmark: jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), "
          f"{threads} threads, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    conv_impl = (f"winograd (patches below {winograd.MIN_IN_CHANNELS} input channels)" if jax.default_backend() == "cpu"
                 else "xla")
    print(f"execution defaults: conv_impl={conv_impl}, steps_per_call=auto "
          f"(CPU: {execution.CPU_STEPS_PER_CALL} steps, cut to ~{execution.CHUNK_SECONDS:.0f} s a call), runs_per_group=auto (CPU: up to "
          f"{execution.CPU_STEP_BYTES_PER_GROUP / 2**20:.0f} MiB of step activations), microbatches=auto (CPU: "
          f"the same budget, models without batch norm or dropout), buffer donation on")
    peak = peak_matmul_flops()
    print(f"peak: {peak / 1e9:.1f} GFLOP/s (f32 2048^3 matmul, XLA, {threads} threads)", flush=True)
    return peak


def throughput_rows(args, cells: list[Cell], threads: int) -> list[dict]:
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    max_bytes = args.max_memory_gb * 2**30 if args.max_memory_gb else 0.4 * total_ram
    few = args.quick or args.models is not None  # the candidates of --quick, not every grouping
    sequential: dict[tuple[str, int], TorchCell] = {}
    rows = []
    for cell in cells:
        seconds = 0.01 if args.tiny else 0.5 if args.quick else 1.5
        ways, skipped = ({}, {}) if args.no_torch else torch_ways(cell, threads, seconds, sequential, max_bytes)
        steps = 1 if args.tiny else timed_steps(cell.model, cell.batch_size, cell.runs, args.quick, args.scale)
        # best of 4 rounds in --quick: the shared machine has slow spells; 2 for a HEAVY model's long steps
        repeats = 1 if args.tiny else 2 if cell.model in HEAVY else 4 if args.quick else args.repeats
        row = jax_cell(cell, steps, repeats, max_bytes, few, ways)
        row["torch"].update({way: {"skipped": why} for way, why in skipped.items()})
        print(benchmark_report.cell_line(row), flush=True)
        rows.append(row)
    return rows


def reuse_compiled_programs(directory: str) -> None:
    """Points the jobs' persistent compilation cache (`execution.enable_compilation_cache`) at
    `directory`, a fresh one: each training program is still compiled cold
    (`_TimedProgram.compile`, the `compile s` column), while a cell's candidates load the programs
    they share (initialization, the epoch's batch order) instead of compiling them again (program
    set-up in a --quick run: 19 -> 10 s)."""
    os.environ["CIFAR_JAX_CACHE_DIR"] = directory  # the documented override of the cache directory
    execution.enable_compilation_cache()


def main(args, threads: int) -> dict:
    start = time.time()
    cells, e2e_models = plan_cells(args)
    peak = _header(threads)
    # The end-to-end jobs first: they compile cold with no persistent cache, as a first job does; JAX
    # sets its cache up once, at the first compile that has a directory, so it comes after them.
    start_s = benchmark_e2e.process_start_s(not args.no_torch) if e2e_models else 0.0
    e2e_rows = [benchmark_e2e.e2e_row(m, tiny=args.tiny, with_torch=not args.no_torch) for m in e2e_models]
    with tempfile.TemporaryDirectory(prefix="cifar_jax_benchmark_cache_") as cache:
        reuse_compiled_programs(cache)
        rows = throughput_rows(args, cells, threads)
    if rows:
        print("\nmodel-images/s = images x runs / second. PyTorch sequential trains the runs one after another (one "
              "model's images/s); torch.func trains them at once on a shared batch. Ratios are to the faster of the "
              f"two.\nMFU = XLA's training FLOPs per image x cifar_jax model-img/s / {peak / 1e9:.1f} GFLOP/s "
              "(matmul peak, this run).")
        print(benchmark_report.table(rows, peak))
    if e2e_rows:
        print(f"\n{benchmark_e2e.table(e2e_rows)}\ncifar_jax's one-time imports (clu, TensorFlow), before the jobs "
              f"and not in their times: {start_s:.1f} s")
    lines = benchmark_report.targets(rows) + benchmark_e2e.targets(e2e_rows)
    print("\n" + "\n".join(lines))
    elapsed = time.time() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kind = "quick" if args.quick else "models" if args.models is not None else "e2e" if args.e2e is not None else "full"
    print(f"\n{kind} benchmark{' (--tiny: timings meaningless)' if args.tiny else ''}: {elapsed:.0f} s, "
          f"peak RSS of the process {peak_rss:,.0f} MB")
    result = {"kind": kind, "tiny": args.tiny, "threads": threads, "peak_flops": peak, "jax": jax.__version__,
              "backend": jax.default_backend(), "rows": rows, "e2e": e2e_rows,
              "e2e_process_start_s": start_s, "targets": lines,
              "seconds": elapsed, "load_average": os.getloadavg()}
    path = args.json or ("" if kind != "full" or args.tiny else
                         str(REPO / "docs" / "benchmarks" / f"{time.strftime('%Y-%m-%d')}-full.json"))
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2, default=float)
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main(ARGS, THREADS)
