"""How a program runs on the current backend: the one place where speed choices are made.

None of these choices changes results beyond float tolerance (tests/test_execution.py); they only
trade dispatch overhead against XLA's handling of loops and convolutions on each backend.
"""

import jax
import ml_collections

from cifar_jax.errors import ConfigError


def backend() -> str:
    return jax.default_backend()


def steps_per_call(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Training steps per compiled call: a whole epoch in one `lax.scan` on accelerators, one bare
    step per call on CPU, where XLA runs convolutions inside loop bodies several times slower."""
    requested = int(config.execution.steps_per_call)
    if requested < 0:
        raise ConfigError(f"execution.steps_per_call={requested} must be >= 0 (0 picks per backend)")
    if requested == 0:
        requested = 1 if backend() == "cpu" else steps_per_epoch
    return min(requested, steps_per_epoch)


def conv_impl(requested: str) -> str:
    """Convolution formulation: image patches x matmul on CPU (vmap over per-seed kernels becomes a
    batched matmul instead of a slow grouped convolution), XLA's convolution elsewhere."""
    if requested not in ("auto", "xla", "patches"):
        raise ConfigError(f"model.conv_impl={requested!r} is unknown; use auto, xla or patches")
    if requested == "auto":
        return "patches" if backend() == "cpu" else "xla"
    return requested
