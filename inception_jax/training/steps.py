"""The pure step functions: `train_step(state, batch) -> (state, metrics)` and `eval_step(variables, batch) ->
sums`. `make_train_step` / `make_eval_step` close them over the model and the recipe, to be jitted by the loop.

BatchNorm statistics: with `bn_groups = 1` a training batch is normalised with statistics of the whole global
batch (under `jit` XLA all-reduces them across devices), so a step does not depend on how many devices share it.
`bn_groups = G > 1` splits the batch into G consecutive groups, each normalised with its own statistics, as TF's
replicas were (G = number of devices reproduces that: each device's rows form one group, and no statistics cross
devices). The moving averages then take the mean of the groups' updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from inception_jax.accuracy import topk_counts
from inception_jax.models import dead_channel_fraction, dead_fraction
from inception_jax.training import optim
from inception_jax.training.sharding import DATA
from inception_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Mean softmax cross-entropy against one-hot labels smoothed as TF-slim does: (1 - s) * onehot + s / classes."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def _forward(model: nn.Module, variables: dict, images: jax.Array, dropout_rng: jax.Array) -> tuple:
    """Training-mode forward pass -> (logits, aux logits or None, final feature map, new batch_stats)."""
    logits, updates = model.apply(
        variables, images, train=True, mutable=["batch_stats", "intermediates"], rngs={"dropout": dropout_rng}
    )
    inter = updates.get("intermediates", {})
    aux = inter["aux_logits"][0] if "aux_logits" in inter else None
    return logits, aux, inter["features"][0], updates["batch_stats"]


def _grouped_forward(model: nn.Module, variables: dict, images: jax.Array, dropout_rng: jax.Array, groups: int,
                     mesh: Any) -> tuple:
    """`_forward` on `groups` consecutive slices of the batch, each with its own BN statistics (vmap keeps them
    apart); outputs are stitched back into batch order and the BN updates averaged."""
    grouped = images.reshape(groups, images.shape[0] // groups, *images.shape[1:])
    if mesh is not None:  # keep each group on its own device(s): no statistics cross the mesh
        grouped = jax.lax.with_sharding_constraint(grouped, NamedSharding(mesh, PartitionSpec(DATA)))
    rngs = jax.random.split(dropout_rng, groups)
    logits, aux, features, stats = jax.vmap(lambda x, r: _forward(model, variables, x, r))(grouped, rngs)
    merge = lambda y: None if y is None else y.reshape(-1, *y.shape[2:])
    return merge(logits), merge(aux), merge(features), jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)


def make_train_step(
    model: nn.Module,
    schedule: optax.Schedule,
    *,
    label_smoothing: float = 0.1,
    aux_loss_weight: float = 0.4,
    ema_decay: float = 0.9999,
    bn_groups: int = 1,
    mesh: Any = None,
    skip_non_finite: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The training step of the paper's recipe. `ema_decay` 0 turns the moving averages off (they then track the
    weights exactly). `mesh` (optional) pins the BN groups to devices.

    A step with a non-finite loss or gradient norm reports metrics["skipped"] = 1. With `skip_non_finite`
    (nan_policy "skip") it also returns the old state with the step counter advanced, so that training can go on; that
    choice costs a second pass over weights, optimiser state and EMA (XLA's CPU backend does not fuse it into the
    update), so nan_policy "stop" leaves it out: the loop stops at the flag and never saves the state it came with.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        images, labels = batch["image"], batch["label"]

        def loss_fn(params: Any) -> tuple[jax.Array, tuple]:
            variables = {"params": params, "batch_stats": state.batch_stats}
            if bn_groups > 1:
                out = _grouped_forward(model, variables, images, dropout_rng, bn_groups, mesh)
            else:
                out = _forward(model, variables, images, dropout_rng)
            logits, aux, features, new_stats = out
            main_loss = cross_entropy(logits, labels, label_smoothing)
            loss = main_loss
            if aux is not None and aux_loss_weight > 0:
                loss = loss + aux_loss_weight * cross_entropy(aux, labels, label_smoothing)
            return loss, (main_loss, logits, features, new_stats)

        (loss, (main_loss, logits, features, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        # The non-finite check, on the device: the host reads "skipped" with the metrics it reads anyway and stops
        # (nan_policy "stop") or, with skip_non_finite, counts the step, which then changed nothing but the step
        # counter (so the data position moves on past the batch).
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if ema_decay > 0:
            decay = optim.ema_decay(state.step, ema_decay)
            ema_params = optim.ema_update(state.ema_params, params, decay)
            ema_batch_stats = optim.ema_update(state.ema_batch_stats, new_stats, decay)
        else:
            ema_params, ema_batch_stats = params, new_stats
        metrics = {
            "loss": loss,
            "cross_entropy": main_loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "learning_rate": schedule(state.step),
            "grad_norm": grad_norm,
            "dead_fraction": dead_fraction(features),
            "dead_channels": dead_channel_fraction(features),
            "skipped": 1.0 - finite.astype(jnp.float32),
        }
        if skip_non_finite:
            updated = (params, new_stats, opt_state, ema_params, ema_batch_stats)
            kept = (state.params, state.batch_stats, state.opt_state, state.ema_params, state.ema_batch_stats)
            params, new_stats, opt_state, ema_params, ema_batch_stats = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), updated, kept
            )
        metrics["param_norm"] = optax.tree.norm(params)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=new_stats,
            opt_state=opt_state,
            ema_params=ema_params,
            ema_batch_stats=ema_batch_stats,
        )
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[dict, Batch], Metrics]:
    """(variables, batch) -> sums over the batch's real examples (`mask` 1) of loss, top-1 and top-5 hits and the
    example count, so that summing over batches and dividing is exact over a split, padding and all."""

    def eval_step(variables: dict, batch: Batch) -> Metrics:
        logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return {"loss": jnp.sum(loss * batch["mask"].astype(jnp.float32)),
                **topk_counts(logits, batch["label"], batch["mask"])}  # fmt: skip

    return eval_step
