"""The training state: step, float32 master weights, BN statistics, optimiser state, their moving averages and the
base random key, as one pytree that is sharded, donated, checkpointed and restored whole."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from inception_jax import models


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimiser updates applied so far (= index of the next training batch)
    params: Any  # float32 master weights, whatever the compute dtype
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # moving averages (optim.ema_decay); copies of params/batch_stats when the EMA is off
    ema_batch_stats: Any
    rng: jax.Array  # uint32 key data; the dropout key of step s is fold_in(rng, s), so resuming changes nothing
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def variables(self, ema: bool = False) -> dict:
        """{'params', 'batch_stats'} for `model.apply`: the raw or the moving-average ones."""
        if ema:
            return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_model(config: ml_collections.ConfigDict, num_classes: int, bn_axis_name: str | None = None) -> nn.Module:
    """The network `config.model` describes, for `num_classes` classes. Errors name the offending config field."""
    fields = {k: v for k, v in config.model.items() if k != "name"}  # the rest are network fields
    try:
        return models.create(config.model.name, num_classes=num_classes, bn_axis_name=bn_axis_name, **fields)
    except (ValueError, TypeError) as error:
        raise ValueError(f"config section model: {error}") from error


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_size: int
) -> TrainState:
    """The state at step 0: fresh weights, zeroed optimiser state, moving averages equal to the weights.

    Traceable: call it under `jax.jit` with `out_shardings` so that each device builds only its shard.
    """
    init_rng, train_rng = jax.random.split(rng)
    variables = models.init_variables(model, init_rng, image_size)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=params,
        ema_batch_stats=batch_stats,
        rng=jax.random.key_data(train_rng),
        tx=tx,
    )
