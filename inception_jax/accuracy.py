"""Top-k hit counts over a batch with padded examples masked out: what the training loop's eval step and the
multi-crop evaluation both sum over a split."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def topk_counts(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Masked counts of top-1 and top-5 hits (by score: probabilities or their logs), and of real examples."""
    top5 = jax.lax.top_k(scores, min(5, scores.shape[-1]))[1]
    hit1 = top5[:, 0] == labels
    hit5 = jnp.any(top5 == labels[:, None], axis=-1)
    mask = mask.astype(jnp.int32)
    return {"top1": jnp.sum(hit1 * mask), "top5": jnp.sum(hit5 * mask), "count": jnp.sum(mask)}
