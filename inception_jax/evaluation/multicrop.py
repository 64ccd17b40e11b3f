"""Multi-crop and ensemble evaluation: average softmax probabilities over crops and models, count top-k errors
exactly over a split (padded examples are masked out), on any number of devices."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from inception_jax.accuracy import topk_counts

Member = tuple[nn.Module, dict]  # (model, variables)


def crop_log_probabilities(model: nn.Module, variables: dict, views: jax.Array) -> jax.Array:
    """Log of the mean softmax over the views of each image: views [B, V, H, W, 3] -> [B, classes].

    Averaging happens in log space (log-sum-exp of log-softmax): the ranking is that of the mean probability, but
    near-uniform predictions keep their order instead of rounding to ties. Views go through the network one at a
    time for the whole batch (a scan over V keeps the batch axis, which is the one split across devices), so memory
    does not grow with the number of crops.
    """
    log_softmax = lambda x: jax.nn.log_softmax(model.apply(variables, x, train=False).astype(jnp.float32), axis=-1)

    def add_view(total: jax.Array, x: jax.Array) -> tuple[jax.Array, None]:
        return jnp.logaddexp(total, log_softmax(x)), None

    total, _ = jax.lax.scan(add_view, log_softmax(views[:, 0]), jnp.moveaxis(views[:, 1:], 1, 0))
    return total - jnp.log(views.shape[1])


def make_eval_step(members: Sequence[Member]) -> Callable[[list[dict], dict], dict]:
    """A pure step (member variables, batch) -> counts; the ensemble averages the members' crop-averaged
    probabilities (the paper's ensembles average softmax outputs), in log space."""
    models = [model for model, _ in members]

    def step(variables: list[dict], batch: dict) -> dict:
        views = batch["image"] if batch["image"].ndim == 5 else batch["image"][:, None]
        per_member = jnp.stack([crop_log_probabilities(m, v, views) for m, v in zip(models, variables, strict=True)])
        log_mean = jax.nn.logsumexp(per_member, axis=0) - jnp.log(len(models))
        return topk_counts(log_mean, batch["label"], batch["mask"])

    return step


def evaluate(members: Sequence[Member], batches: Iterable[dict], mesh: Mesh | None = None) -> dict[str, float]:
    """Top-1/top-5 error (%) of a model or ensemble over every batch of `batches` (numpy dicts with `image`
    [B, (V,) H, W, 3], `label`, `mask`), batch split across the mesh's devices, variables replicated.

    Counts are integers summed over the whole split, so the result is the same on 1 or 8 devices.
    """
    mesh = mesh or Mesh(np.array(jax.devices()), ("data",))
    data = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    variables = jax.device_put([v for _, v in members], replicated)
    step = jax.jit(make_eval_step(members), in_shardings=(replicated, data), out_shardings=replicated)
    totals = {"top1": 0, "top5": 0, "count": 0}
    for batch in batches:
        if batch["image"].shape[0] % mesh.devices.size:
            raise ValueError(f"eval batch {batch['image'].shape[0]} does not split over {mesh.devices.size} devices")
        counts = step(variables, jax.device_put({k: batch[k] for k in ("image", "label", "mask")}, data))
        for key, value in counts.items():
            totals[key] += int(value)
    if totals["count"] == 0:
        raise ValueError("no examples were evaluated: the split is empty or every example was masked")
    return {
        "top1_error": 100.0 * (1 - totals["top1"] / totals["count"]),
        "top5_error": 100.0 * (1 - totals["top5"] / totals["count"]),
        "num_examples": totals["count"],
    }
