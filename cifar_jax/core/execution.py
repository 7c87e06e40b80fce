"""How a program runs on the current backend: the one place where speed choices are made.

Apart from `compute_dtype` (bfloat16 arithmetic on accelerators, within bfloat16's precision),
none of these choices changes results beyond float tolerance (tests/test_execution.py); they
only trade dispatch overhead, cache footprint and XLA's handling of loops and convolutions on
each backend. Every automatic choice can be overridden in the config:

=====================================  =========================  ================================
choice                                 CPU (2-core AVX2 machine)  GPU / TPU
=====================================  =========================  ================================
`model.conv_impl` (auto)               winograd (F(4x4, kxk) for  xla (cuDNN / TPU convolutions)
                                       3x3/5x5 layers with >= 16
                                       input channels; patches,
                                       im2col x matmul with
                                       space-to-depth blocks,
                                       for the others)
`execution.steps_per_call` (0 = auto)  a `lax.scan` chunk of ~10  1 step, then a chunk sized to
                                       steps (1 for a heavy       take ~`CHUNK_SECONDS` from the
                                       model), cut to ~2 s if     second call's time (job/chunks.py)
                                       slower; 1 with XLA convs
`execution.runs_per_group` (0 = auto)  runs whose activations     all runs in one vmap
                                       fit 12 MiB per step (LeNet
                                       b4: 11, b128: 1; CNN: 1);
                                       all runs for a model whose
                                       parameters outweigh its
                                       activations (004's MLP)
`execution.microbatches` (0 = auto)    slices of a batch whose    1 (the whole batch)
                                       activations fit 12 MiB,
                                       for models whose examples
                                       never interact (LeNet
                                       b128: 2; with batch norm
                                       or dropout: 1)
`execution.compute_dtype` (auto)       float32                    bfloat16 matmuls/convs,
                                                                  float32 parameters, BN, loss
max-pool backward (not configurable)   one pass, if the pool's    JAX's own max gradient
                                       input is recomputed bit
                                       for bit (`stage_form`)
buffer donation                        on (state and sums)        on
compilation cache                      `enable_compilation_cache`, the same on every backend
=====================================  =========================  ================================

Why each choice, with the measurements behind it: README, "Performance".
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cifar_jax import checks
from cifar_jax.errors import CifarJaxError, ConfigError
from cifar_jax.models.layers import Compute

# The first call's length on CPU: long enough to amortise dispatch (~0.1-0.3 ms per call), short
# enough that progress and interruption stay responsive. A model whose step keeps more than
# `CPU_PROBE_STEP_BYTES` of activations per run starts with one step instead (the full block CNN
# keeps 1.6 GiB and takes ~15 s a step at batch 128 on 2 cores: 10 steps would be 150 s).
CPU_STEPS_PER_CALL = 10
CPU_PROBE_STEP_BYTES = 64 * 2**20
# What one call of training steps should take when its length is automatic: progress lines,
# periodic checkpoints and a stop request (SIGTERM) act between calls, so a stop waits for at most
# two calls (job/chunks.py); a few seconds amortise dispatch on any device.
CHUNK_SECONDS = 2.0
# Activations (VJP residuals) one vmapped training step may keep on CPU: runs are mapped in groups
# of as many as fit, one group at a time. Measured (8 LeNet seeds, scripts/benchmark.py's group
# candidates, quiet 2-core EPYC): the fastest group kept 8-12 MiB of activations in every batch
# size (b4, 1 MiB a run: 8 runs; b16, 2.9 MiB: 4; b32, 5.6 MiB: 2; b64 and b128, 11 and 21 MiB: 1);
# a group twice that size ran 10-25% slower, and vmapping 8 runs of LeNet at batch 128 was 30%
# slower than one at a time: the step's working set must stay in the caches.
CPU_STEP_BYTES_PER_GROUP = 12 * 2**20
# ... unless a run's parameters outweigh its activations: the step then streams every run's
# weights through the caches whatever the group, and one vmap of all runs turns each layer's
# matmuls into one batched matmul that keeps both cores busy. Measured (004's MLP, 6 MiB of
# parameters and 2.5 MiB of activations a run at batch 100, 8 seeds, quiet 2-core EPYC): groups
# of 8 ran 16% faster than the budget's groups of 4 (docs/performance.md). No other study model
# is weight-bound: their activations are 1.7-2,400x their parameters at the studies' batch sizes.

_CACHE_ENV = "CIFAR_JAX_CACHE_DIR"
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
# `execution.policy`: whose automatic choices apply. "accelerator" on a CPU runs the GPU/TPU
# choices there (tests of the accelerator path on a machine without one).
POLICIES = ("auto", "cpu", "accelerator")
RUNS_AXIS = "runs"
CONV_IMPLS = ("auto", "xla", "patches", "winograd")


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How one program runs, decided once per program (`plan`); models and the loop only read it."""

    backend: str
    conv_impl: str  # 'xla' | 'patches' | 'winograd'
    compute_dtype: str  # 'float32' | 'bfloat16'
    steps_per_call: int  # training steps per compiled call
    runs_per_group: int | None  # runs vmapped together per step on each device (None: all)
    mesh: Mesh | None = None  # 1-D ('runs',) over every device of every process; None: one device
    microbatches: int = 1  # equal slices of a batch whose gradients are computed one after another
    policy: str = "cpu"  # whose automatic choices were made: 'cpu' | 'accelerator'
    chunk_seconds: float | None = None  # steps_per_call re-sized to take this long (job/chunks.py); None: fixed
    eval_batch_size: int | None = None  # evaluation examples per batch, sized to memory; None: the config's
    memory: Any = None  # memory.RunMemory of one run, where measured (accelerators)
    # 'one_pass': max pools may use their one-pass backward, whose exactness was only verified on
    # XLA:CPU (`models.pooling.window_max`); 'jax': JAX's own max gradient, on every other backend.
    pool_backward: str = "jax"

    @property
    def bare_steps(self) -> bool:
        """One training step a call, outside any loop: XLA:CPU runs its own convolutions several
        times slower inside loop bodies (`step.train_chunk`)."""
        return self.policy == "cpu" and self.conv_impl == "xla"

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def padded(self, num_runs: int) -> int:
        """Runs the program trains: `num_runs` rounded up to a multiple of the device count (the
        padding runs are trained and dropped, never reported or checkpointed)."""
        return -(-num_runs // self.num_devices) * self.num_devices

    @property
    def compute(self) -> Compute:
        """How the models of this program compute (`models.layers.Compute`)."""
        return Compute(self.conv_impl, self.compute_dtype, self.pool_backward)


def validate(config: ml_collections.ConfigDict) -> None:
    """The execution fields' own checks, without deciding anything (config validation)."""
    checks.all_of(
        lambda: checks.integer(config, "execution.steps_per_call", low=0, hint="0 picks per backend"),
        lambda: checks.integer(config, "execution.runs_per_group", low=0, hint="0 picks per backend"),
        lambda: checks.integer(config, "execution.microbatches", low=0, hint="0 picks per backend"),
        lambda: checks.choice(config, "execution.compute_dtype", COMPUTE_DTYPES),
        lambda: "stop_grace_s" not in config.execution  # absent from workdirs of earlier versions
        or checks.number(config, "execution.stop_grace_s", low=0, hint="seconds; 0 never forces an exit"),
        # Fields newer than some workdirs' config.json: checked where present.
        lambda: "policy" not in config.execution or checks.choice(config, "execution.policy", POLICIES),
        lambda: "memory_limit_bytes" not in config.execution or checks.integer(
            config, "execution.memory_limit_bytes", low=0, hint="0 takes the device's own limit"),
        lambda: checks.choice(config, "model.conv_impl", CONV_IMPLS),
    )


def runs_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """The 1-D mesh that shards the run axis over `devices` (default: all devices of all
    processes); None for a single device."""
    devices = list(jax.devices() if devices is None else devices)
    return None if len(devices) == 1 else Mesh(np.array(devices), (RUNS_AXIS,))


def plan(config: ml_collections.ConfigDict, *, steps_per_epoch: int, step_bytes: Callable[[ExecutionPlan], int],
         backend: str | None = None, devices: Sequence[jax.Device] | None = None,
         batch_separable: Callable[[ExecutionPlan], bool] = lambda _: False,
         param_bytes: Callable[[ExecutionPlan], int] = lambda _: 0) -> ExecutionPlan:
    """The execution plan of one program on `backend` (default: JAX's) over `devices` (default:
    all). `step_bytes(plan)` gives the activations one run's step keeps for backward on the whole
    batch; `batch_separable(plan)` whether the model's examples never interact (`batch_separable`);
    `param_bytes(plan)` one run's parameters (`model_param_bytes`). They are only called when a
    CPU choice is made automatically, or to check a requested one.
    The config's execution fields have passed `validate` (the job's one validation pass)."""
    backend = backend or jax.default_backend()
    policy = resolved_policy(config, backend)
    conv = config.model.conv_impl
    conv = ("winograd" if policy == "cpu" else "xla") if conv == "auto" else conv
    dtype = config.execution.compute_dtype
    dtype = ("float32" if policy == "cpu" else "bfloat16") if dtype == "auto" else dtype
    provisional = ExecutionPlan(backend, conv, dtype, 1, None, runs_mesh(devices), policy=policy,
                                pool_backward="one_pass" if backend == "cpu" else "jax")
    whole_batch_bytes = functools.cache(lambda: int(step_bytes(provisional)))  # traced once, if at all
    fixed = bool(int(config.execution.steps_per_call)) or provisional.bare_steps
    provisional = dataclasses.replace(
        provisional, steps_per_call=_steps_per_call(config, steps_per_epoch, policy, conv, whole_batch_bytes),
        chunk_seconds=None if fixed else CHUNK_SECONDS)
    microbatches = _microbatches(config, policy, provisional, lambda _: whole_batch_bytes(), batch_separable)
    with_microbatches = dataclasses.replace(provisional, microbatches=microbatches)
    return dataclasses.replace(with_microbatches, runs_per_group=_runs_per_group(
        config, policy, with_microbatches, lambda _: whole_batch_bytes() // microbatches, param_bytes))


def plan_record(plan: ExecutionPlan) -> dict[str, Any]:
    """What data.json and results.json record of how the runs were computed: a resume or a
    comparison can then tell a bfloat16 GPU run from a float32 CPU one."""
    device = (jax.devices() if plan.mesh is None else list(plan.mesh.devices.flat))[0]
    return {"backend": plan.backend, "device_kind": device.device_kind, "device_count": plan.num_devices,
            "policy": plan.policy, "compute_dtype": plan.compute_dtype, "matmul_precision": matmul_precision(plan),
            "conv_impl": plan.conv_impl, "runs_per_group": plan.runs_per_group, "microbatches": plan.microbatches,
            "eval_batch_size": plan.eval_batch_size, "deterministic": "--xla_gpu_deterministic_ops=true" in
            os.environ.get("XLA_FLAGS", "")}


def matmul_precision(plan: ExecutionPlan) -> str | None:
    """'highest' where float32 must mean float32 on an accelerator (GPUs use TF32 and TPUs one
    bfloat16 pass for float32 matmuls by default); None: JAX's default (exact float32 on CPU)."""
    return "highest" if plan.compute_dtype == "float32" and plan.policy == "accelerator" else None


def with_precision(fn: Callable[..., Any], plan: ExecutionPlan) -> Callable[..., Any]:
    """`fn` traced under the plan's matmul precision (`matmul_precision`)."""
    precision = matmul_precision(plan)
    if precision is None:
        return fn

    @functools.wraps(fn)
    def precise(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)
    return precise


def apply_xla_flags(config: ml_collections.ConfigDict) -> None:
    """`execution.deterministic`: XLA's deterministic GPU kernels (no atomics in reductions and
    scatters, fixed cuDNN algorithms), so a repeated or resumed GPU run gives identical numbers.
    Must run before anything touches a JAX backend, which reads XLA_FLAGS once."""
    flag = "--xla_gpu_deterministic_ops=true"
    flags = os.environ.get("XLA_FLAGS", "")
    if config.execution.get("deterministic", False) and flag not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def resolved_policy(config: ml_collections.ConfigDict, backend: str) -> str:
    """'cpu' or 'accelerator': `execution.policy`, where auto follows the backend."""
    policy = config.execution.get("policy", "auto")
    return ("cpu" if backend == "cpu" else "accelerator") if policy == "auto" else policy


def chunk_length(steps_per_epoch: int, target: int) -> int:
    """The largest divisor of `steps_per_epoch` in [target/2, target], else `target`: an epoch is
    then whole chunks of one length (one compiled program) whenever such a divisor exists."""
    target = max(1, min(target, steps_per_epoch))
    for length in range(target, max(1, target // 2) - 1, -1):
        if steps_per_epoch % length == 0:
            return length
    return target


def _steps_per_call(config: ml_collections.ConfigDict, steps_per_epoch: int, policy: str, conv_impl: str,
                    step_bytes: Callable[[], int]) -> int:
    """Auto (0): the first call's length, which job/chunks.py re-sizes from its time. On
    accelerators 1 step (a probe); on CPU a chunk of ~`CPU_STEPS_PER_CALL` steps, or 1 step for a
    model heavier than `CPU_PROBE_STEP_BYTES`; 1 bare step per call, fixed, when the model uses
    XLA's convolutions, which XLA:CPU runs several times slower inside loop bodies."""
    requested = int(config.execution.steps_per_call)
    if requested:
        return min(requested, steps_per_epoch)
    if policy != "cpu" or conv_impl == "xla" or step_bytes() > CPU_PROBE_STEP_BYTES:
        return 1
    return chunk_length(steps_per_epoch, CPU_STEPS_PER_CALL)


def _runs_per_group(config: ml_collections.ConfigDict, policy: str, provisional: ExecutionPlan,
                    step_bytes: Callable[[ExecutionPlan], int],
                    param_bytes: Callable[[ExecutionPlan], int]) -> int | None:
    """Auto (0): all runs on accelerators; on CPU as many runs as fit `CPU_STEP_BYTES_PER_GROUP`
    of activations kept for the backward pass, or all runs when a run's parameters outweigh its
    activations (a weight-bound step)."""
    requested = int(config.execution.runs_per_group)
    if requested:
        return requested
    if policy != "cpu":
        return None
    activations = max(int(step_bytes(provisional)), 1)
    if int(param_bytes(provisional)) > activations:
        return None
    return max(1, CPU_STEP_BYTES_PER_GROUP // activations)


def _microbatches(config: ml_collections.ConfigDict, policy: str, provisional: ExecutionPlan,
                  step_bytes: Callable[[ExecutionPlan], int], batch_separable: Callable[[ExecutionPlan], bool]) -> int:
    """Auto (0): on CPU, the fewest equal slices of the batch whose activations fit
    `CPU_STEP_BYTES_PER_GROUP`, for a model whose examples never interact (the gradients then sum
    to the whole batch's); 1 otherwise. Measured (LeNet, batch 128, 21 MiB a run, quiet 2-core
    EPYC): 2 slices of 64 ran 8 seeds ~17% faster than the whole batch, as batch 64 itself did."""
    requested = int(config.execution.microbatches)
    batch_size = int(config.batch_size)
    if requested > 1:
        if batch_size % requested:
            raise ConfigError(f"execution.microbatches={requested} must divide batch_size={batch_size}; "
                              f"use a divisor, or 0 to pick automatically")
        if not batch_separable(provisional):
            raise ConfigError(f"execution.microbatches={requested} needs a model whose examples never interact, "
                              f"but this one has batch norm or dropout; use 1, or 0 to pick automatically")
    if requested:
        return requested
    if policy != "cpu" or not batch_separable(provisional):
        return 1
    needed = -(-int(step_bytes(provisional)) // CPU_STEP_BYTES_PER_GROUP)
    return next(m for m in range(max(needed, 1), batch_size + 1) if batch_size % m == 0)


def batch_separable(build: Callable[[jax.Array, jax.Array], Any]) -> bool:
    """Whether the model `build(params_key, dropout_key)` makes treats each example on its own in
    training: it carries no state besides its parameters. Batch norm (statistics of the batch)
    and dropout (a random stream advanced per call) do, so microbatches would change them."""
    return not jax.tree.leaves(_abstract_split(build)[2])


def _abstract_split(build: Callable[[jax.Array, jax.Array], Any]) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graph, parameters, other state) of the model `build` makes, from shapes alone."""
    return nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0), jax.random.key(0))), nnx.Param, ...)


def residual_bytes(fn: Callable[..., Any], *args: Any, argnums: Sequence[int] = (0,)) -> int:
    """Bytes that reverse-mode differentiation of `fn(*args)` with respect to `args[argnums]`
    keeps from the forward pass (the VJP's residuals: activations, patches, dropout masks), from
    shapes alone: nothing is compiled or run. `args` may be arrays or `jax.ShapeDtypeStruct`s.
    A residual that is a differentiated argument itself (a kernel a custom VJP keeps, like
    `models.matmul`'s) is that argument, not an activation: JAX's own rules keep such inputs
    without a copy, and it is not counted either way."""

    def residuals(*all_args):
        def of_differentiated(*differentiated):
            full = list(all_args)
            for index, value in zip(argnums, differentiated):
                full[index] = value
            return fn(*full)
        inputs = jax.tree.leaves([all_args[i] for i in argnums])
        kept = jax.tree.leaves(jax.vjp(of_differentiated, *(all_args[i] for i in argnums))[1])
        return [leaf for leaf in kept if not any(leaf is argument for argument in inputs)]

    return tree_bytes(jax.eval_shape(residuals, *args))


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays (or shapes) of `tree`; a PRNG key counts its key data."""
    return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def model_param_bytes(build: Callable[[jax.Array, jax.Array], Any]) -> int:
    """Bytes of one run's parameters in the model `build(params_key, dropout_key)` makes, from
    shapes alone."""
    return tree_bytes(_abstract_split(build)[1])


def model_step_bytes(build: Callable[[jax.Array, jax.Array], Any], batch_shape: tuple[int, ...]) -> int:
    """Activations one run's training step keeps for its backward pass (`residual_bytes` of the
    model `build(params_key, dropout_key)` makes, in training mode), from shapes alone."""
    train_graph, params, model_state = _abstract_split(build)

    def forward(params, model_state, images):
        return nnx.merge(train_graph, params, model_state, copy=True)(images).sum()

    return residual_bytes(forward, params, model_state, jax.ShapeDtypeStruct(batch_shape, jnp.float32))


def per_device(fn: Callable[..., Any], plan: ExecutionPlan, in_axes: Sequence[int | None]) -> Callable[..., Any]:
    """`fn` (mapped over the leading run axis of its `in_axes == 0` arguments) run by every device
    on its own block of runs: `shard_map` over the plan's mesh, so the program holds no
    cross-device collective; arguments with `in_axes None` are replicated. Identity on one device."""
    if plan.mesh is None:
        return fn
    specs = tuple(P(RUNS_AXIS) if axis == 0 else P() for axis in in_axes)
    return jax.shard_map(fn, mesh=plan.mesh, in_specs=specs, out_specs=P(RUNS_AXIS))


def place_runs(tree: Any, num_runs: int, plan: ExecutionPlan) -> Any:
    """Per-run arrays (host or device, identical on every process) extended to `num_runs` by
    repeating the last run, and split along the run axis over the plan's mesh."""
    def pad(tree):
        return jax.tree.map(lambda leaf: jnp.concatenate(
            [leaf, jnp.repeat(leaf[-1:], num_runs - leaf.shape[0], axis=0)]) if leaf.shape[0] < num_runs else leaf, tree)
    if plan.mesh is None:
        return pad(tree)
    return jax.jit(pad, out_shardings=NamedSharding(plan.mesh, P(RUNS_AXIS)))(tree)


def replicate(tree: Any, plan: ExecutionPlan) -> Any:
    """The same arrays on every device of the plan's mesh (the data set; gathered results, which
    every process can then read, e.g. with `np.asarray`)."""
    return tree if plan.mesh is None else jax.jit(lambda t: t, out_shardings=NamedSharding(plan.mesh, P()))(tree)


def map_over_runs(fn: Callable[..., Any], in_axes: Sequence[int | None],
                  group_size: int | None) -> Callable[..., Any]:
    """`jax.vmap(fn, in_axes)` computed `group_size` runs at a time: a `lax.map` over groups of
    the leading (run) axis, each group vmapped. Same results as the plain vmap (each run is
    independent); `group_size` None or >= the number of runs is the plain vmap.

    `in_axes` has one entry per positional argument: 0 (the whole pytree is mapped over its
    leading axis) or None (shared by all runs).
    """
    in_axes = tuple(in_axes)
    if any(axis not in (0, None) for axis in in_axes):
        raise ValueError(f"map_over_runs takes in_axes of 0 or None, got {in_axes}")

    def mapped(*args):
        if len(args) != len(in_axes):
            raise TypeError(f"expected {len(in_axes)} arguments, got {len(args)}")
        batched = tuple(a for a, axis in zip(args, in_axes) if axis == 0)
        num_runs = jax.tree.leaves(batched)[0].shape[0]
        if group_size is None or group_size >= num_runs:
            return jax.vmap(fn, in_axes=in_axes)(*args)

        def one_run(run_args):
            it = iter(run_args)
            return fn(*(next(it) if axis == 0 else a for a, axis in zip(args, in_axes)))

        return jax.lax.map(one_run, batched, batch_size=group_size)

    return mapped


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins JAX's multi-controller runtime when `execution.distributed` is set: the coordinator,
    process count and id come from the config where given, else from JAX's own detection (TPU VM
    slices, SLURM, Open MPI). Must run before anything touches a JAX backend."""
    execution = config.execution
    if not execution.get("distributed", False):
        return
    jax.distributed.initialize(coordinator_address=execution.get("coordinator_address", "") or None,
                               num_processes=execution.get("num_processes", 0) or None,
                               process_id=None if execution.get("process_id", -1) < 0 else execution.process_id)


def is_primary() -> bool:
    """Process 0 prints and writes everything that is not a checkpoint."""
    return jax.process_index() == 0


def primary_print(text: str) -> None:
    """Prints on process 0 only: a multi-process job speaks with one voice."""
    if is_primary():
        print(text, flush=True)


_MESSAGE_BYTES = 1024  # a refusal's text, as broadcast to the other processes
_REFUSED = -(2**31)  # the decision that says: process 0 raised, the message follows


def primary_decides(decide: Callable[[], int | None]) -> int:
    """`decide()` run on process 0 alone, its answer returned on every process (one broadcast):
    what only the primary may check or take (a lock, the workdir's files) never splits a
    multi-process job. When it raises, every process raises too, with process 0's one line
    (the others as `CifarJaxError`, exit status 1), instead of waiting in the next collective."""
    value, message = 0, ""
    if is_primary():
        try:
            value = int(decide() or 0)
        except Exception as error:
            if jax.process_count() == 1:
                raise
            _broadcast_decision(_REFUSED, error if isinstance(error, CifarJaxError) else
                                f"process 0 failed ({type(error).__name__}: {error}); see its output")
            raise
    if jax.process_count() == 1:
        return value
    value, message = _broadcast_decision(value, message)
    if value == _REFUSED:
        raise CifarJaxError(message)
    return value


def _broadcast_decision(value: int, message: Any) -> tuple[int, str]:
    """(value, message) as process 0 sent them, on every process."""
    from jax.experimental import multihost_utils

    text = np.zeros(_MESSAGE_BYTES, np.uint8)
    encoded = str(message).encode()[:_MESSAGE_BYTES]
    text[:len(encoded)] = np.frombuffer(encoded, np.uint8)
    value, text = multihost_utils.broadcast_one_to_all((np.int32(value), text))
    return int(value), bytes(np.asarray(text)).rstrip(b"\0").decode(errors="replace")


@contextlib.contextmanager
def on_primary(context: contextlib.AbstractContextManager) -> Iterator[None]:
    """Enters `context` (a workdir lock) on process 0 only; a refusal to enter ends every
    process with its one line (`primary_decides`)."""
    with contextlib.ExitStack() as stack:
        primary_decides(lambda: stack.enter_context(context) and 0)
        yield


def default_cache_dir() -> str:
    """$CIFAR_JAX_CACHE_DIR, else $XDG_CACHE_HOME/cifar_jax/jax (~/.cache/cifar_jax/jax)."""
    if os.environ.get(_CACHE_ENV):
        return os.path.expanduser(os.environ[_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cifar_jax", "jax")


def enable_compilation_cache(workdir: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache, so a resumed run or a repeated sweep loads its
    compiled programs instead of recompiling them (a LeNet step: ~10 s of XLA:CPU compile).

    The cache lives in `default_cache_dir()` (shared by all runs of this user), or in
    `<workdir>/jax_cache` when that directory cannot be created (a local workdir only: the
    fallback is a private local directory). CIFAR_JAX_CACHE_DIR=off turns
    it off. Call it before the first compilation. Thresholds are low enough that CPU programs
    are cached. The cache holds executable code: keep it private to the user (created 0700).
    Returns the directory used, or None when off or unavailable.
    """
    if os.environ.get(_CACHE_ENV, "").lower() in ("off", "0", "none", "false"):
        return None
    local = workdir and "://" not in workdir
    candidates = [default_cache_dir()] + ([os.path.join(workdir, "jax_cache")] if local else [])
    for path in candidates:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(f"{path} is not writable")
        except OSError as error:
            logging.warning("compilation cache: cannot use %s (%s)", path, error)
            continue
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        return path
    return None
