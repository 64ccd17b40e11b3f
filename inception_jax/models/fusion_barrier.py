"""An identity that XLA's CPU backend will not fuse through: for the residual stream of Inception-ResNet, and
(`materialise`) for values inside custom gradients that are costly to recompute (Winograd outputs, max-pool argmax),
and (`stored_input`) for the inputs of the convolutions XLA runs itself.

Each residual block's output, ReLU(x + scale * up), is cheap elementwise work, and XLA's CPU fusion duplicates
cheap producers into every consumer. Down a stack of residual blocks that compounds: a consumer of block k's output
recomputes blocks 1..k from their matmul outputs (72 fusions of an Inception-ResNet-v2 train step spanned 3 to 20
blocks, 475 ms of its 2.5 s of profiled op time at batch 8, 299x299). `lax.optimization_barrier` does not stop it:
the CPU compiler removes barriers before fusion.

XLA never duplicates a division into its consumers (divisions count as expensive), so dividing by a one the compiler
cannot fold makes the stream a materialised buffer again. The one is built from each element's own sign bit,
(bits >> 31) | 1, which is 1 for every bit pattern, NaN and infinity included; x / 1 is exact, so values and
gradients are unchanged bit for bit. The backward pass divides its cotangent the same way, which stops the same
recomputation in the gradient's residual stream. Other backends get a plain identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _divide_by_opaque_one(x: jax.Array) -> jax.Array:
    # An elementwise one rather than a broadcast scalar: XLA rewrites x / broadcast(b) as the cheap x * (1 / b).
    unsigned = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
    sign = lax.shift_right_logical(lax.bitcast_convert_type(x, unsigned), unsigned.type(8 * x.dtype.itemsize - 1))
    return x / (sign | unsigned.type(1)).astype(x.dtype)


def materialise(x: jax.Array) -> jax.Array:
    """The barrier without a gradient rule of its own, for the insides of custom-VJP rules: `x`, computed once
    into a buffer on the CPU."""
    return lax.platform_dependent(x, cpu=_divide_by_opaque_one, default=lambda v: v)


@jax.custom_vjp
def fusion_barrier(x: jax.Array) -> jax.Array:
    """`x`, materialised: XLA's CPU backend computes it once instead of re-deriving it inside each consumer."""
    return materialise(x)


def _fusion_barrier_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return materialise(x), None


def _fusion_barrier_bwd(_: None, cotangent: jax.Array) -> tuple[jax.Array]:
    return (materialise(cotangent),)


fusion_barrier.defvjp(_fusion_barrier_fwd, _fusion_barrier_bwd)


@jax.custom_vjp
def stored_input(x: jax.Array) -> jax.Array:
    """`x` materialised in the forward pass only; its cotangent passes through untouched (no division).

    For the inputs of the convolutions XLA's CPU backend runs itself: it takes their weight gradients from a
    batch-minor transposed copy of the input, and its fusion recomputed the input's producer (BatchNorm + ReLU)
    inside that transpose, in the transpose's order: 24.8 ms for one 147x147x64 input at batch 8 in a v4 train step,
    where the transpose of a stored array takes 5.9 ms.
    """
    return materialise(x)


def _stored_input_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return materialise(x), None


def _stored_input_bwd(_: None, cotangent: jax.Array) -> tuple[jax.Array]:
    return (cotangent,)


stored_input.defvjp(_stored_input_fwd, _stored_input_bwd)
