"""Config -> optax chain, in one place.

`make_optimizer(optim_config, hparams, steps_per_epoch=..., num_epochs=...)` builds

    [clip_by_global_norm] -> [coupled decay: g += wd * p] -> base optimizer
        -> [decoupled decay: u += wd * p] -> scale by -lr(step)

from the *static* choices in `config.optim` (optimizer name, Nesterov, weight-decay mode and
mask, clipping norm, schedule shape) and the *traced* values in `hparams` (learning rate,
weight decay, momentum). Traced values may be `jax.vmap` tracers: the optimizer state's
structure never depends on them (SGD always keeps a momentum trace, the weight-decay transform is
always present), so one compiled program trains a whole grid of them. Call `make_optimizer`
inside the traced function that owns `hparams`; the chain closes over them.

PyTorch semantics, because the studies used PyTorch:

- `sgd`: `torch.optim.SGD` with `dampening=0`: `b = mu * b + g` (first step `b = g`, which is what
  a zero-initialised `optax.trace` gives), update `lr * b`, or `lr * (g + mu * b)` with Nesterov.
  `momentum = 0` is plain SGD.
- `adam`: `torch.optim.Adam` (betas 0.9/0.999, eps 1e-8 added outside the square root, bias
  correction); `optax.scale_by_adam` is exactly this rule. Adam and AdamW ignore `momentum`.
- `adamw`: Adam with decoupled weight decay (`torch.optim.AdamW`): `p -= lr * (adam + wd * p)`.
  It is always decoupled, whatever `weight_decay_mode` says.
- `rmsprop`: `torch.optim.RMSprop` (alpha 0.99, eps 1e-8 *outside* the square root, no
  centering, squares initialised to 0), then a momentum trace `b = mu * b + g / (sqrt(v) + eps)`
  as torch does; `momentum = 0` is torch's default RMSprop. (`optax.rmsprop`'s defaults put eps
  inside the square root and decay 0.9, so it is not used as is.)
- `weight_decay_mode="coupled"` adds `wd * p` to the (clipped) gradient before the base
  optimizer: `torch.optim.SGD/Adam/RMSprop(weight_decay=wd)`, i.e. L2 regularisation.
  `"decoupled"` adds `wd * p` to the base optimizer's direction, scaled by the scheduled learning
  rate like `optax.adamw` / `torch.optim.AdamW` (for SGD this is SGDW).
- `decay_kernels_only`: weight decay only for parameters with `ndim > 1` (conv and dense kernels);
  biases and BatchNorm scales/offsets are not decayed. The rule looks at shapes, so it is
  independent of how the parameter tree is keyed, but it must see *per-model* parameters: apply
  the optimizer inside the vmap over seeds (as the training core does), not to stacked ones.
- Clipping (`grad_clip_norm > 0`) is by global norm on the raw gradient, before coupled decay, as
  `torch.nn.utils.clip_grad_norm_` before `optimizer.step()`.

Schedules are per step and configured in epochs; the learning rate is
`hparams["learning_rate"] * shape(step)` where `shape` is `make_schedule(...)` (peak 1). The
first update uses step 0. With `warmup_epochs > 0`, every schedule except `one_cycle` starts with a
linear warmup from 0 (at step 0) to 1 (at step `warmup_steps`); the decay then runs over the
remaining steps:

- `constant`: 1.
- `warmup_cosine`: cosine from 1 (end of warmup) to 0 (step `num_epochs * steps_per_epoch`); the
  midpoint of the cosine part is 0.5. Without warmup it is a plain cosine decay.
- `step`: multiplied by `step_factor` at the first step of each epoch in `step_epochs`
  (`torch.optim.lr_scheduler.MultiStepLR` stepped per epoch; `step_epochs` count from the start of
  training, fractional epochs allowed, boundaries past the end have no effect).
- `linear`: linear from 1 (end of warmup) to 0 at the end.
- `one_cycle`: the curve of `optax.cosine_onecycle_schedule` with torch `OneCycleLR`'s defaults:
  cosine from 1/25 up to 1 at the end of `warmup_epochs` (30% of the run when that is 0), then
  cosine down to 1/(25 * 1e4) at the end. Momentum is not cycled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from cifar_jax import checks

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
SCHEDULES = ("constant", "warmup_cosine", "step", "linear", "one_cycle")

# PyTorch's defaults (torch.optim.Adam/AdamW betas and eps; torch.optim.RMSprop alpha and eps).
ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8
# torch.optim.lr_scheduler.OneCycleLR's defaults (also optax.cosine_onecycle_schedule's).
ONE_CYCLE_PCT_START = 0.3
ONE_CYCLE_DIV = 25.0
ONE_CYCLE_FINAL_DIV = 1e4

# The traced values `make_optimizer` reads from `hparams` (falling back to `config.optim`).
OPTIM_HPARAMS = ("learning_rate", "weight_decay", "momentum")


def _check_lengths(steps_per_epoch: int, num_epochs: int) -> tuple[int, int]:
    if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
        raise checks.fail("steps per epoch", steps_per_epoch, "must be an integer >= 1",
                          "is batch_size larger than the training set?")
    if int(num_epochs) != num_epochs or num_epochs < 1:
        raise checks.fail("num_epochs", num_epochs, "must be an integer >= 1")
    return int(steps_per_epoch), int(num_epochs)


def make_schedule(
    optim_config, *, steps_per_epoch: int, num_epochs: int
) -> Callable[[jax.typing.ArrayLike], jax.Array]:
    """The learning-rate shape (peak 1) as a function of the step count; see the module doc."""
    steps_per_epoch, num_epochs = _check_lengths(steps_per_epoch, num_epochs)
    name = checks.one_of("optim.schedule", optim_config.schedule, SCHEDULES)
    total = steps_per_epoch * num_epochs
    warmup_epochs = checks.finite("optim.warmup_epochs", optim_config.warmup_epochs, low=0)
    warmup = round(warmup_epochs * steps_per_epoch)
    if warmup >= total:
        raise checks.fail("optim.warmup_epochs", warmup_epochs, f"must be shorter than the run ({num_epochs} "
                          f"epochs of {steps_per_epoch} steps)")

    if name == "one_cycle":
        # optax.cosine_onecycle_schedule's curve, with the peak at exactly `warmup` steps (it
        # would compute int(pct_start * total), which can land one step early).
        peak = warmup if warmup > 0 else int(ONE_CYCLE_PCT_START * total)
        return optax.piecewise_interpolate_schedule(
            "cosine",
            1.0 / ONE_CYCLE_DIV,
            {peak: ONE_CYCLE_DIV, total: 1.0 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV)},
        )

    decay_steps = total - warmup  # steps after the warmup
    if name == "constant":
        main = lambda step: jnp.ones_like(step, dtype=jnp.float32)  # noqa: E731
    elif name == "warmup_cosine":
        main = optax.cosine_decay_schedule(1.0, decay_steps, alpha=0.0)
    elif name == "linear":
        main = optax.linear_schedule(1.0, 0.0, decay_steps)
    else:  # step
        factor = checks.finite("optim.step_factor", optim_config.step_factor, above=0)
        epochs = optim_config.step_epochs
        if isinstance(epochs, (int, float)):
            epochs = (epochs,)
        epochs = [checks.finite("optim.step_epochs", e) for e in epochs]
        if any(e <= 0 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise checks.fail("optim.step_epochs", tuple(epochs), "must be positive and increasing")
        scales: dict[int, float] = {}
        for e in epochs:  # boundaries relative to the end of the warmup, as `main` sees them
            boundary = round(e * steps_per_epoch) - warmup
            scales[boundary] = scales.get(boundary, 1.0) * factor
        main = optax.piecewise_constant_schedule(1.0, scales)

    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def _kernel_mask(params):
    """True for parameters with more than one dimension (conv and dense kernels)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _static_choices(optim_config) -> tuple[str, str, bool, float]:
    """(optimizer, weight-decay mode, nesterov, clip norm), validated."""
    name = checks.one_of("optim.name", optim_config.name, OPTIMIZERS)
    mode = checks.one_of("optim.weight_decay_mode", optim_config.weight_decay_mode, WEIGHT_DECAY_MODES)
    nesterov = bool(optim_config.nesterov)
    if nesterov and name != "sgd":
        raise checks.fail("optim.nesterov", True, f"applies to sgd only, not optim.name={name!r}")
    clip = checks.finite("optim.grad_clip_norm", optim_config.grad_clip_norm, low=0, hint="0 = off")
    return name, mode, nesterov, clip


def check_config(optim_config, *, steps_per_epoch: int, num_epochs: int) -> None:
    """Every static check of `config.optim`, the choices and the schedule reported together."""
    checks.all_of(lambda: _static_choices(optim_config),
                  lambda: make_schedule(optim_config, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs))


def make_optimizer(
    optim_config,
    hparams: Mapping[str, jax.typing.ArrayLike] | None = None,
    *,
    steps_per_epoch: int,
    num_epochs: int,
) -> optax.GradientTransformation:
    """The optax chain for `config.optim`; see the module doc for the exact rules.

    Args:
      optim_config: `config.optim`; only its static choices are read, plus the values of
        `learning_rate`, `weight_decay` and `momentum` where `hparams` does not give them.
      hparams: traced scalars (may be `vmap` tracers) for `learning_rate`, `weight_decay` and
        `momentum`; other keys are ignored.
      steps_per_epoch, num_epochs: the run's length, for the schedule.
    """
    name, mode, nesterov, clip = _static_choices(optim_config)
    shape = make_schedule(optim_config, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)

    hparams = dict(hparams or {})
    values = {}
    for key in OPTIM_HPARAMS:
        if key in hparams:
            value = hparams[key]
        else:
            value = checks.finite(f"optim.{key}", getattr(optim_config, key))
        values[key] = jnp.asarray(value, jnp.float32)
    base_lr = values["learning_rate"]

    def learning_rate(step):
        return base_lr * shape(step)

    mask = _kernel_mask if optim_config.decay_kernels_only else None
    weight_decay = optax.add_decayed_weights(values["weight_decay"], mask)
    decoupled = name == "adamw" or mode == "decoupled"

    if name == "sgd":
        base = optax.trace(decay=values["momentum"], nesterov=nesterov)
    elif name in ("adam", "adamw"):
        base = optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS)
    else:  # rmsprop
        base = optax.chain(
            optax.scale_by_rms(
                decay=RMSPROP_ALPHA, eps=RMSPROP_EPS, initial_scale=0.0, eps_in_sqrt=False
            ),
            optax.trace(decay=values["momentum"]),
        )

    parts = []
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    if not decoupled:
        parts.append(weight_decay)
    parts.append(base)
    if decoupled:
        parts.append(weight_decay)
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
