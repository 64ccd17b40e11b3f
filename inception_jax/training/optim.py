"""The paper's optimiser: TF1 RMSProp (or SGD with momentum), the staircase learning-rate schedule, coupled L2
weight decay with the right mask, global-norm clipping, and the exponential moving average of the weights.

TF1's `RMSPropOptimizer` (paper §4, v3 paper §8):
    ms  <- decay * ms + (1 - decay) * g^2          ms starts at 1, not 0
    mom <- momentum * mom + lr * g / sqrt(ms + eps)   eps = 1.0, inside the square root; lr inside the momentum
    w   <- w - mom
`optax.rmsprop` with `initial_scale=1, eps_in_sqrt=True` and momentum is exactly this (it scales by the learning
rate before its momentum trace); its defaults, and PyTorch's RMSprop, are not.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("rmsprop", "momentum")
LR_SCALINGS = ("none", "linear", "sqrt")


def tf1_rmsprop(
    learning_rate: optax.ScalarOrSchedule, decay: float = 0.9, momentum: float = 0.9, eps: float = 1.0
) -> optax.GradientTransformation:
    """RMSProp exactly as TF1's `tf.train.RMSPropOptimizer` (see the module docstring)."""
    return optax.rmsprop(
        learning_rate, decay=decay, eps=eps, initial_scale=1.0, eps_in_sqrt=True, centered=False, momentum=momentum
    )


def scaled_learning_rate(config: ml_collections.ConfigDict) -> float:
    """`config.learning_rate` scaled for the global batch: linear (Goyal et al. 2017) or sqrt in
    batch_size / lr_base_batch_size, or unscaled ("none", the paper's replicas of 32 images each)."""
    ratio = config.batch_size / config.lr_base_batch_size
    factor = {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[config.lr_scaling]
    return float(config.learning_rate) * factor


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """lr(step) = base * lr_decay_factor ** floor(epoch / lr_decay_epochs) (staircase, epoch = step / steps per
    epoch), times a linear warm-up from 0 over the first `warmup_epochs` when that is > 0.

    Paper: base 0.045, factor 0.94 every 2 epochs, no warm-up. Large synchronous batches want a scaled base
    (`lr_scaling`) and a few warm-up epochs.
    """
    base = scaled_learning_rate(config)
    decay_steps = max(1, round(config.lr_decay_epochs * steps_per_epoch))
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    factor = float(config.lr_decay_factor)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step)
        lr = base * factor ** jnp.floor_divide(step, decay_steps).astype(jnp.float32)
        if warmup_steps > 0:
            lr = lr * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)
        return lr

    return schedule


def weight_decay_mask(params: Any, decay_biases: bool = False) -> Any:
    """True for the parameters the L2 penalty applies to: every conv and dense `kernel`, and with `decay_biases` the
    biases of convs and dense layers (the residual 1x1 projections and the classifiers), never BatchNorm's
    `scale`/`bias` (modules named `bn`).

    TF-slim's `inception_resnet_v2_arg_scope` regularises biases too (`biases_regularizer`); its v3/v4 scopes have
    no biases to regularise; BN's beta is never regularised.
    """

    def decays(path: tuple, _: Any) -> bool:
        names = [getattr(key, "key", str(key)) for key in path]
        if "bn" in names[:-1]:
            return False
        return names[-1] == "kernel" or (decay_biases and names[-1] == "bias")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Coupled L2 decay (added to the gradient, as slim's regularisation losses were) -> global-norm clipping ->
    TF1 RMSProp, or SGD with momentum as TF1's `MomentumOptimizer` (accum = m * accum + g; w -= lr * accum)."""
    parts = []
    if config.weight_decay > 0:
        decay_biases = bool(config.weight_decay_biases)
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=lambda p: weight_decay_mask(p, decay_biases)))
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.optimizer == "rmsprop":
        parts.append(tf1_rmsprop(schedule, config.rmsprop_decay, config.momentum, config.rmsprop_epsilon))
    elif config.optimizer == "momentum":
        parts.append(optax.sgd(schedule, momentum=config.momentum))
    else:
        raise ValueError(f"config field optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    return optax.chain(*parts)


def ema_decay(step: jax.Array, max_decay: float) -> jax.Array:
    """TF's `ExponentialMovingAverage(decay, num_updates=step)`: min(decay, (1 + step) / (10 + step)), so the
    average follows the weights closely early on and settles to `max_decay`."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


def ema_update(average: Any, new: Any, decay: jax.Array) -> Any:
    """average <- decay * average + (1 - decay) * new, leaf by leaf."""
    return jax.tree.map(lambda a, x: a * decay + x.astype(a.dtype) * (1.0 - decay), average, new)
