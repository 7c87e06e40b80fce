"""Measurement helpers of the benchmark: peak memory, the matmul peak, PyTorch's timed rounds.
Imported by `scripts/benchmark.py` after it pinned the process's cores (JAX sizes its thread pool
from them)."""

from __future__ import annotations

import statistics
import threading
import time

import jax
import jax.numpy as jnp


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


class TorchCell:
    """One PyTorch way of training a cell's runs, timed a few steps at a time (~`seconds` per
    repeat) between cifar_jax's timed epochs, so both frameworks see the same machine load.
    `runner` is a `torch_reference.ThroughputRunner` (one model: the runs train one after
    another, so model-images/s is one model's images/s) or a `FuncThroughputRunner` (all runs at
    once with torch.func); `models_per_step` is 1 or the number of stacked models."""

    def __init__(self, way: str, runner, batch_size: int, models_per_step: int, seconds: float):
        self.way, self.runner = way, runner
        self.images_per_step = batch_size * models_per_step
        self.runner.steps(1)  # warm-up: allocator, oneDNN primitives
        wall, _ = self.runner.steps(1)
        # At least 3 steps a round, or 1 where a step alone takes longer than a round should.
        self.steps_per_repeat = int(min(2000, max(1 if wall > seconds else 3, seconds / wall)))
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
