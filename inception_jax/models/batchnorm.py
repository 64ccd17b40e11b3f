"""BatchNorm (and the ReLU after it) as one operation with a hand-written training gradient.

Same variables, statistics and moving-average updates as `flax.linen.BatchNorm` over the last axis (fast variance
E[x^2] - E[x]^2 in float32, clipped at zero), so checkpoints and imported weights are interchangeable. Why not flax's:
differentiated automatically, BatchNorm + ReLU's backward pass became about five separate elementwise and reduction
passes per layer plus a materialised ReLU mask on XLA's CPU backend (XLA's profile of a v4 train step). Written
out, it is a pass for the masked cotangent, two reductions and a pass for the input gradient, and it keeps only the
conv output and four per-channel vectors for the backward pass.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _mean(x: jax.Array) -> jax.Array:
    """Mean over all but the last axis."""
    return jnp.mean(x, axis=tuple(range(x.ndim - 1)))


def _statistics(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    moments = jnp.stack([_mean(x), _mean(jnp.square(x))])
    mean, mean_sq = moments if axis_name is None else lax.pmean(moments, axis_name)  # one collective for both
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, activate: bool, axis_name: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(ReLU if `activate`)((x - mean) / sqrt(var + epsilon) * scale + bias) with the batch's statistics over all
    axes but the last (and over `axis_name`'s devices); returns (output in x's dtype, mean, var), both float32."""
    return _forward(x, scale, bias, epsilon, activate, axis_name)[0]


def _forward(x, scale, bias, epsilon, activate, axis_name):  # noqa: ANN001, ANN202
    x32 = x.astype(jnp.float32)
    mean, var = _statistics(x32, axis_name)
    rstd = lax.rsqrt(var + epsilon)
    y = (x32 - mean) * (rstd * scale) + bias
    if activate:
        y = jnp.maximum(y, 0.0)
    return (y.astype(x.dtype), mean, var), (x, scale, bias, mean, rstd)


def _backward(epsilon, activate, axis_name, residuals, cotangents):  # noqa: ANN001, ANN202
    x, scale, bias, mean, rstd = residuals
    dy, dmean, dvar = cotangents
    centred = x.astype(jnp.float32) - mean
    g = dy.astype(jnp.float32)
    if activate:  # ReLU's gradient at 0 is 0, as jax.nn.relu's
        g = jnp.where(centred * (rstd * scale) + bias > 0, g, 0.0)
    n = x.size // x.shape[-1]
    local = jnp.stack([_mean(g), _mean(g * centred)])
    # The parameters' gradients are this device's own (as autodiff of flax's BatchNorm gives under pmap); the
    # input's gradient sees every device's share of the statistics.
    dbias, dscale = n * local[0], n * rstd * local[1]
    mean_g, mean_g_centred = local if axis_name is None else lax.pmean(local, axis_name)
    if axis_name is not None:
        dmean, dvar = lax.pmean(jnp.stack([dmean, dvar]), axis_name)
    dx = (scale * rstd) * (g - mean_g - centred * (rstd * rstd * mean_g_centred))
    # The statistics are outputs too (for the moving averages); their cotangents are usually zero.
    dx = dx + dmean / n + centred * (2.0 * dvar / n)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
    """`flax.linen.BatchNorm(axis=-1)` with an optional ReLU fused in: the same variables (params `scale`, `bias`;
    batch_stats `mean`, `var`) and the same updates (ra = momentum * ra + (1 - momentum) * batch statistic)."""

    use_running_average: bool | None = None  # or given to each call, as flax's
    momentum: float = 0.99
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    axis_name: str | None = None
    activate: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (features,)) if self.use_scale else jnp.ones(features)
        bias = self.param("bias", nn.initializers.zeros, (features,)) if self.use_bias else jnp.zeros(features)
        dtype = self.dtype or x.dtype
        if use_running_average:
            y = (x.astype(jnp.float32) - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
            return (jnp.maximum(y, 0.0) if self.activate else y).astype(dtype)
        # Flax does not average over devices while initialising (the axis may not exist yet).
        axis_name = None if self.is_initializing() else self.axis_name
        y, mean, var = batch_norm_train(x.astype(dtype), scale, bias, self.epsilon, self.activate, axis_name)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
