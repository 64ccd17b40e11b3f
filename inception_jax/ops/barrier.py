"""The residual stream's fusion barrier, and the two CPU helpers built on the same trick.

XLA's CPU fusion duplicates cheap elementwise producers into every consumer. Down a stack of residual blocks that
compounds: a consumer of block k's output recomputes blocks 1..k. `lax.optimization_barrier` does not stop it (the
CPU compiler removes barriers before fusion), but XLA never duplicates a division, so dividing by a one that the
compiler cannot fold makes a value a materialised buffer. The one is built from each element's own sign bit,
(bits >> 31) | 1, which is 1 for every bit pattern, NaN and infinity included; x / 1 is exact, so values and
gradients are unchanged bit for bit. Figures: docs/performance.md.

- `residual(x, impl)`: the op the networks use (the reference is the identity).
- `fusion_barrier` (the CPU kernel of `residual`: the forward value and the cotangent are both materialised),
  `materialise` (no gradient rule, for the insides of custom-VJP rules) and `stored_input` (forward only, for the
  inputs of the convolutions XLA's CPU backend runs itself) are CPU kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from inception_jax.ops.implementation import select


def materialise(x: jax.Array) -> jax.Array:
    """`x`, computed once into a buffer by XLA's CPU backend (an exact division by an opaque one)."""
    # An elementwise one rather than a broadcast scalar: XLA rewrites x / broadcast(b) as the cheap x * (1 / b).
    unsigned = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
    sign = lax.shift_right_logical(lax.bitcast_convert_type(x, unsigned), unsigned.type(8 * x.dtype.itemsize - 1))
    return x / (sign | unsigned.type(1)).astype(x.dtype)


@jax.custom_vjp
def fusion_barrier(x: jax.Array) -> jax.Array:
    """`x`, materialised in the forward pass, and its cotangent materialised in the backward pass."""
    return materialise(x)


def _fusion_barrier_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return materialise(x), None


def _fusion_barrier_bwd(_: None, cotangent: jax.Array) -> tuple[jax.Array]:
    return (materialise(cotangent),)


fusion_barrier.defvjp(_fusion_barrier_fwd, _fusion_barrier_bwd)


@jax.custom_vjp
def stored_input(x: jax.Array) -> jax.Array:
    """`x` materialised in the forward pass only; its cotangent passes through untouched.

    XLA's CPU backend takes a convolution's weight gradient from a batch-minor transposed copy of its input, and
    otherwise recomputes the input's producer (BatchNorm + ReLU) inside that transpose, in the transpose's order.
    """
    return materialise(x)


def _stored_input_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return materialise(x), None


def _stored_input_bwd(_: None, cotangent: jax.Array) -> tuple[jax.Array]:
    return (cotangent,)


stored_input.defvjp(_stored_input_fwd, _stored_input_bwd)


def residual(x: jax.Array, impl: str = "auto") -> jax.Array:
    """The output of a residual block, `x`: the identity, materialised by the CPU kernel."""
    return select(impl, lambda v: v, fusion_barrier, x)
