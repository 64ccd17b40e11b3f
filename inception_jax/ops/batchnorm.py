"""BatchNorm over the last axis with an optional ReLU after it: training-mode statistics and normalisation.

Statistics are flax `BatchNorm`'s (fast variance E[x^2] - E[x]^2 in float32, clipped at zero; one mean over
`axis_name`'s devices for both moments). The reference is those formulas differentiated by JAX. Differentiated
automatically, BatchNorm + ReLU's backward pass becomes about five elementwise and reduction passes per layer plus a
materialised ReLU mask on XLA's CPU backend; the CPU kernel (`cpu_batch_norm`) writes the gradient out as one pass
for the masked cotangent, two reductions and one pass for the input gradient, keeping only the input and four
per-channel vectors for the backward pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from inception_jax.ops.implementation import select


def _mean(x: jax.Array) -> jax.Array:
    """Mean over all but the last axis."""
    return jnp.mean(x, axis=tuple(range(x.ndim - 1)))


def _statistics(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    moments = jnp.stack([_mean(x), _mean(jnp.square(x))])
    mean, mean_sq = moments if axis_name is None else lax.pmean(moments, axis_name)  # one collective for both
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def cpu_batch_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, activate: bool, axis_name: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The CPU kernel of `batch_norm`, with its written gradient."""
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


cpu_batch_norm.defvjp(_forward, _backward)


def reference_batch_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, activate: bool, axis_name: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The reference: flax's formulas, differentiated by JAX."""
    x32 = x.astype(jnp.float32)
    mean, var = _statistics(x32, axis_name)
    y = normalise(x32, mean, var, scale, bias, epsilon, activate)
    return y.astype(x.dtype), mean, var


def batch_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    epsilon: float,
    activate: bool,
    axis_name: str | None = None,
    impl: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(ReLU if `activate`)((x - mean) / sqrt(var + epsilon) * scale + bias) with the batch's statistics over all
    axes but the last (and over `axis_name`'s devices): (output in x's dtype, mean, var), the statistics float32."""
    reference = lambda *a: reference_batch_norm(*a, epsilon, activate, axis_name)
    cpu = lambda *a: cpu_batch_norm(*a, epsilon, activate, axis_name)
    return select(impl, reference, cpu, x, scale, bias)


def normalise(
    x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, activate: bool
) -> jax.Array:
    """(ReLU if `activate`)((x - mean) / sqrt(var + epsilon) * scale + bias) in float32, for given statistics
    (inference, with the moving averages)."""
    y = (x.astype(jnp.float32) - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
    return jnp.maximum(y, 0.0) if activate else y
