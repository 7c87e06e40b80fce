"""cifar_jax vs PyTorch, side by side in one process: training throughput over seeds.

    python scripts/benchmark.py --quick          # < 2 minutes on 2 cores: the target cells
    python scripts/benchmark.py --json runs/benchmark.json   # the full table

For each model (the tutorial LeNet, the fifth study's CNN, a reduced block CNN), batch size
(4, 128) and number of seeds S (1, 8, 32) it reports:

- model-images/s = images x seeds / second of training, steady state (after compilation and a
  warm-up epoch), over a fixed number of steps on synthetic CIFAR-sized uint8 arrays (the data
  values do not change the work). cifar_jax runs what users run: `train.make_train` (the
  config's Program: all S seeds in one compiled program, the execution defaults of
  `cifar_jax.execution` for this backend) driven by `train.train_epoch`, one epoch = the timed
  steps. PyTorch runs the S seeds one after another, as the studies' code would: its
  model-images/s is one seed's images/s (S seeds take S times as long), measured once per model
  and batch size with `scripts/torch_reference.train_steps_per_second` (the reference loop).
- the ratio cifar_jax / PyTorch per cell, on wall time and on CPU time (images per CPU-second of
  the whole process, all threads): on a machine shared with other work the wall-clock ratio
  swings with the load, the CPU-time ratio much less. PyTorch's timed repeats run between
  cifar_jax's timed epochs of the same cell, so both see the same load; best of the repeats.
- compile time of cifar_jax's training step (XLA, cold: no persistent cache), peak host memory
  (RSS of this process sampled during the cell; the process holds both frameworks), and model
  FLOP utilisation: the training FLOPs per image from XLA's cost analysis of the train step
  (lowered with XLA convolutions, one seed, one step: the model's arithmetic, not the extra
  multiply-adds of a faster formulation) x model-images/s / the peak f32 FLOP/s of a large
  matmul measured in the same run.

Threads: both frameworks use the same `--threads` cores. The process is pinned to that many
cores (`os.sched_setaffinity`) before JAX starts, which sizes XLA:CPU's thread pool, and PyTorch
gets `torch.set_num_threads(threads)`. Default: every core (2 on the development machines).
"""

from __future__ import annotations

import argparse
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
PARSER.add_argument("--repeats", type=int, default=3, help="timed epochs per cell (best and median kept)")
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

from cifar_jax import execution, train  # noqa: E402
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
QUICK_CELLS = [("lenet", 128, 1), ("lenet", 128, 8), ("lenet", 4, 8), ("cnn_bn_dropout", 128, 1)]


def jax_config(model: str, batch_size: int, num_seeds: int):
    config = MODELS[model][0]()
    config.batch_size = batch_size
    config.num_seeds = num_seeds
    # Throughput of the model's training step: no augmentation (the PyTorch loop has none).
    config.augment.crop_padding = 0
    config.augment.flip = False
    return config


def timed_steps(model: str, batch_size: int, num_seeds: int, quick: bool, scale: float) -> int:
    """Steps per timed epoch for about IMAGES_PER_EPOCH model-images: at least 2, a multiple of 10
    from 10 on (CPU's automatic step chunks then divide the epoch: one compiled program)."""
    steps = IMAGES_PER_EPOCH[model] * (0.3 if quick else 1.0) * scale / (batch_size * num_seeds)
    if steps < 10:
        return max(2, int(round(steps)))
    return min(2000, int(round(steps / 10.0)) * 10)


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
    """PyTorch's side of one (model, batch size): a `torch_reference.ThroughputRunner` with a step
    count of ~`seconds` per timed repeat, run between cifar_jax's timed epochs so both
    frameworks are measured under the same machine load."""

    def __init__(self, model: str, batch_size: int, threads: int, seconds: float):
        import torch
        import torch_reference

        _, name, kwargs, _ = MODELS[model]
        self.model, self.batch_size, self.version = model, batch_size, torch.__version__
        self.runner = torch_reference.ThroughputRunner(name, batch_size, threads=threads, **kwargs)
        self.runner.steps(2)  # warm-up: allocator, oneDNN primitives
        wall, _ = self.runner.steps(2)
        self.steps_per_repeat = int(min(2000, max(3, seconds * 2 / wall)))
        self.walls, self.cpus = [], []

    def repeat(self):
        wall, cpu = self.runner.steps(self.steps_per_repeat)
        self.walls.append(wall)
        self.cpus.append(cpu)

    def result(self, since: int = 0) -> dict:
        images = self.steps_per_repeat * self.batch_size
        walls, cpus = self.walls[since:], self.cpus[since:]
        return {"framework": "pytorch", "model": self.model, "batch_size": self.batch_size,
                "steps": self.steps_per_repeat, "repeats": len(walls), "images_per_s": images / min(walls),
                "images_per_s_median": images / statistics.median(walls),
                "images_per_cpu_s": images / statistics.median(cpus), "torch": self.version}


def jax_cell(model: str, batch_size: int, num_seeds: int, steps: int, repeats: int, max_bytes: float,
             torch_cell: TorchCell | None = None) -> tuple[dict, dict | None]:
    """cifar_jax's measurement of one cell, with PyTorch's repeats interleaved (if given):
    returns (cifar_jax result, PyTorch result over the same stretch of time)."""
    config = jax_config(model, batch_size, num_seeds)
    num_train = steps * batch_size
    images, labels = _synthetic(num_train)
    torch_since = len(torch_cell.walls) if torch_cell else 0
    with PeakRSS() as rss:
        program, hparams, state = _setup(config, num_train)
        args, kwargs = _train_steps_call(program, state, hparams, images, labels)
        start = time.perf_counter()
        compiled = program.train_steps.lower(*args, **kwargs).compile()  # the call below reuses it
        compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        need = (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
                if memory is not None else 0)
        result = {"framework": "cifar_jax", "model": model, "batch_size": batch_size, "seeds": num_seeds,
                  "steps": steps, "steps_per_call": program.plan.steps_per_call,
                  "runs_per_group": min(program.plan.runs_per_group or num_seeds, num_seeds), "compile_s": compile_s,
                  "step_memory_gb": need / 2**30}
        if max_bytes and need > max_bytes:
            result["skipped"] = f"the compiled step needs {need / 2**30:.1f} GB > {max_bytes / 2**30:.1f} GB"
            return result, None
        state, _, _ = train.train_epoch(program, state, hparams, images, labels, 1)  # warm-up epoch
        jax.block_until_ready(state.step)
        walls, cpus = [], []
        for epoch in range(2, repeats + 2):
            if torch_cell:
                torch_cell.repeat()
            wall, cpu = time.perf_counter(), time.process_time()
            state, sums, _ = train.train_epoch(program, state, hparams, images, labels, epoch)
            jax.block_until_ready((state.step, sums))
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        if torch_cell:
            torch_cell.repeat()
    model_images = steps * batch_size * num_seeds
    result.update(images_per_s=model_images / min(walls), images_per_s_median=model_images / statistics.median(walls),
                  images_per_cpu_s=model_images / statistics.median(cpus), peak_rss_mb=rss.mb,
                  flops_per_image=train_flops_per_image(model, batch_size))
    return result, (torch_cell.result(torch_since) if torch_cell else None)


# ----------------------------------------------------------------------------- report


def _fmt(value, spec=",.0f", missing="-"):
    return missing if value is None else format(value, spec)


def table(rows: list[dict], peak: float) -> str:
    head = ("| model | batch | seeds | cifar_jax model-img/s | PyTorch model-img/s | ratio | ratio (CPU time) "
            "| compile s | peak RSS MB | MFU |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        j, t = row["jax"], row.get("torch")
        if "skipped" in j:
            lines.append(f"| {row['model']} | {row['batch_size']} | {row['seeds']} | skipped: {j['skipped']} "
                         "| | | | | | |")
            continue
        ratio = j["images_per_s"] / t["images_per_s"] if t else None
        cpu_ratio = j["images_per_cpu_s"] / t["images_per_cpu_s"] if t else None
        mfu = j["flops_per_image"] * j["images_per_s"] / peak
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {row['seeds']} | {_fmt(j['images_per_s'])} "
            f"| {_fmt(t and t['images_per_s'])} | {_fmt(ratio, '.2f')} | {_fmt(cpu_ratio, '.2f')} "
            f"| {j['compile_s']:.1f} | {j['peak_rss_mb']:,.0f} | {100 * mfu:.0f}% |")
    return "\n".join(lines)


def targets(rows: list[dict], peak: float) -> list[str]:
    cells = {(r["model"], r["batch_size"], r["seeds"]): r for r in rows if "skipped" not in r["jax"]}
    out = []

    def ratio(key):
        row = cells.get(key)
        return row["jax"]["images_per_s"] / row["torch"]["images_per_s"] if row and row.get("torch") else None

    for key, goal, text in [(("lenet", 128, 8), 1.0, "LeNet, batch 128, 8 seeds: >= 1x PyTorch"),
                            (("lenet", 4, 8), 2.0, "LeNet, batch 4, 8 seeds: >= 2x PyTorch")]:
        value = ratio(key)
        if value is not None:
            out.append(f"{text}: {value:.2f}x  {'met' if value >= goal else 'MISSED'}")
    one, many = cells.get(("lenet", 128, 1)), cells.get(("lenet", 128, 32))
    if one and many:
        value = many["jax"]["images_per_s"] / one["jax"]["images_per_s"]
        out.append(f"LeNet, batch 128, 32 seeds >= 1.5x the 1-seed model-img/s: {value:.2f}x  "
                   f"{'met' if value >= 1.5 else 'MISSED'}")
    cnn = cells.get(("cnn_bn_dropout", 128, 1))
    if cnn:
        mfu = cnn["jax"]["flops_per_image"] * cnn["jax"]["images_per_s"] / peak
        out.append(f"fifth study's CNN, batch 128: MFU {100 * mfu:.0f}% of the matmul peak (target 50%)  "
                   f"{'met' if mfu >= 0.5 else 'MISSED'}")
    return out


def main(args, threads: int) -> dict:
    start = time.time()
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; use {', '.join(MODELS)}")
    if args.quick:
        cells = [c for c in QUICK_CELLS if c[0] in models]
    else:
        cells = [(m, int(b), int(s)) for m in models for b in args.batch_sizes.split(",")
                 for s in args.seeds.split(",")]
    repeats = 2 if args.quick else args.repeats
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    max_bytes = args.max_memory_gb * 2**30 if args.max_memory_gb else 0.4 * total_ram

    print(f"cifar_jax benchmark: jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), "
          f"{threads} threads, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"execution defaults: conv_impl={'patches' if jax.default_backend() == 'cpu' else 'xla'}, steps_per_call=auto "
          f"(CPU chunk {execution.CPU_STEPS_PER_CALL}), runs_per_group=auto (CPU: up to "
          f"{execution.CPU_STEP_BYTES_PER_GROUP / 2**20:.0f} MiB of step activations), buffer donation on")
    peak = peak_matmul_flops()
    print(f"peak: {peak / 1e9:.1f} GFLOP/s (f32 2048^3 matmul, XLA, {threads} threads)", flush=True)

    torch_cells: dict[tuple[str, int], TorchCell] = {}
    rows = []
    for model, batch_size, seeds in cells:
        torch_cell = None
        if not args.no_torch:
            if (model, batch_size) not in torch_cells:
                torch_cells[(model, batch_size)] = TorchCell(model, batch_size, threads, 0.5 if args.quick else 1.5)
            torch_cell = torch_cells[(model, batch_size)]
        steps = timed_steps(model, batch_size, seeds, args.quick, args.scale)
        j, t = jax_cell(model, batch_size, seeds, steps, repeats, max_bytes, torch_cell)
        if "skipped" in j:
            print(f"  {model:15s} batch {batch_size:3d} seeds {seeds:2d}  skipped: {j['skipped']}", flush=True)
        else:
            line = (f"  {model:15s} batch {batch_size:3d} seeds {seeds:2d}  cifar_jax {j['images_per_s']:7,.0f} "
                    f"model-img/s ({j['images_per_cpu_s']:,.0f}/CPU-s, {steps} steps, {j['steps_per_call']}/call, "
                    f"{j['runs_per_group']} runs/group, "
                    f"compile {j['compile_s']:.1f} s)")
            if t:
                line += f"  pytorch {t['images_per_s']:7,.0f} img/s ({t['images_per_cpu_s']:,.0f}/CPU-s)"
            print(line, flush=True)
        rows.append({"model": model, "batch_size": batch_size, "seeds": seeds, "jax": j, "torch": t})

    print()
    print("PyTorch runs the S seeds one after another: its model-images/s is one seed's images/s "
          "(time for S seeds = S x one seed's time).")
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
