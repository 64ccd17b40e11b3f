"""BatchNorm recalibration before an evaluation ("precise BN"): every layer's mean and variance recomputed over N
training batches, with the weights being evaluated frozen.

Why: the moving averages (`ra <- momentum * ra + (1 - momentum) * batch statistic`) lag weights that change fast,
and a deep network compounds the lag layer by layer, so an evaluation with them can fall far below what the same
weights reach with their own statistics. Recalibration replaces them, for that evaluation only, by the exact mean
over N batches of each layer's batch mean and batch variance (a cumulative average, not a moving one), measured in
one training-mode pass per batch: each layer sees inputs normalised by the earlier layers' statistics of the same
batch, as in training. Batches are drawn from the training split in the training order but with the evaluation's
preprocessing (no augmentation), and each batch's statistics are over the whole global batch, whatever the device
count, as training computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Batch = Mapping[str, jax.Array]


def make_statistics_step(model: nn.Module) -> Callable[[dict, Batch, Any], Any]:
    """(variables, batch, total) -> total + the batch's statistics of every BatchNorm layer (trees shaped like
    `batch_stats`), to be jitted.

    A training-mode pass of the model with BatchNorm momentum 0, whose moving-average update is then exactly the
    batch statistic (flax's convention: ra <- momentum * ra + (1 - momentum) * statistic). Dropout acts after the
    last BatchNorm layer only, so its key changes no statistic."""
    statistics_model = model.clone(bn_momentum=0.0)

    def statistics_step(variables: dict, batch: Batch, total: Any) -> Any:
        _, updates = statistics_model.apply(variables, batch["image"], train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(0)})
        return jax.tree.map(jnp.add, total, updates["batch_stats"])

    return statistics_step


def recalibrate(statistics_step: Callable[[dict, Batch, Any], Any], variables: dict, batches: Iterable[Batch],
                num_batches: int) -> dict:
    """`variables` with `batch_stats` replaced by the mean, over the first `num_batches` of `batches`, of each
    batch's statistics (`statistics_step` from `make_statistics_step`, jitted by the caller). The `variables` passed
    in are not changed."""
    if num_batches < 1:
        raise ValueError(f"recalibration needs at least one batch, got num_batches={num_batches}")
    total, seen = jax.tree.map(jnp.zeros_like, variables["batch_stats"]), 0
    for batch in batches:
        if seen == num_batches:
            break
        total = statistics_step(variables, batch, total)
        seen += 1
    if seen < num_batches:
        raise ValueError(f"recalibration asked for {num_batches} batches, the data gave {seen}")
    return {**variables, "batch_stats": jax.tree.map(lambda s: s / num_batches, total)}
