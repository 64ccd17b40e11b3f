"""The two pools of these networks with TensorFlow's semantics: the 3x3 stride-2 VALID max pool of the grid
reductions and the 3x3 stride-1 SAME average pool that excludes padded zeros from each mean.

The reference is flax's `max_pool` / `avg_pool` (`lax.reduce_window`). On XLA's CPU backend a reduce-window runs as
a naive window loop and the max pool's gradient adds index iotas and a variadic reduce-window, so the CPU kernels
write a window as its shifted, strided views: elementwise maxima and sums that fuse with their neighbours, with a
written max-pool gradient (ties go to the first maximum in row-major order, as in TensorFlow and PyTorch).
Measurements: docs/performance.md.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from inception_jax.ops.barrier import materialise
from inception_jax.ops.implementation import select


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, impl: str = "auto") -> jax.Array:
    """Max pool over NHWC `x` with a square `window`, `stride` and VALID padding."""
    reference = lambda v: nn.max_pool(v, (window, window), strides=(stride, stride), padding="VALID")
    return select(impl, reference, lambda v: max_pool_valid(v, window, stride), x)


def avg_pool(x: jax.Array, window: int = 3, include_padding: bool = False, impl: str = "auto") -> jax.Array:
    """Stride-1 SAME average pool over NHWC `x`; padded zeros count in the mean only with `include_padding`
    (PyTorch's `count_include_pad`, for timm's Inception-v3)."""
    reference = lambda v: nn.avg_pool(v, (window, window), strides=(1, 1), padding="SAME",
                                      count_include_pad=include_padding).astype(v.dtype)  # fmt: skip
    return select(impl, reference, lambda v: avg_pool_same(v, window, include_padding), x)


def _views(x: jax.Array, window: int, stride: int, out_h: int, out_w: int) -> list[jax.Array]:
    """The window's shifted, strided views of an NHWC array, in row-major window order."""
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    return [x[:, i : i + span_h : stride, j : j + span_w : stride, :] for i in range(window) for j in range(window)]


def _valid_size(size: int, window: int, stride: int) -> int:
    return (size - window) // stride + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_valid(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
    """The CPU kernel of `max_pool`: the maximum of the window's strided views, with a written gradient."""
    out_h, out_w = _valid_size(x.shape[1], window, stride), _valid_size(x.shape[2], window, stride)
    return functools.reduce(jnp.maximum, _views(x, window, stride, out_h, out_w))


def _max_pool_fwd(x: jax.Array, window: int, stride: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = max_pool_valid(x, window, stride)
    return y, (x, y)


def _max_pool_bwd(window: int, stride: int, residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple:
    # Each output's gradient goes to the first maximum of its window in row-major order, as in TensorFlow's
    # MaxPoolGrad and PyTorch; ties are common after a ReLU (all-zero windows), so this choice matters.
    x, y = residuals
    n, h, w, c = x.shape
    out_h, out_w = y.shape[1:3]
    views = _views(x, window, stride, out_h, out_w)
    first = jnp.full(y.shape, window * window, jnp.int32)
    for k in reversed(range(window * window)):
        first = jnp.where(views[k] == y, k, first)
    # Materialised once: fused into the assembly below, each input element re-derived the maximum and its index
    # for every window it belongs to.
    first = materialise(first.astype(g.dtype))
    zero = jnp.zeros((), g.dtype)
    # Input row stride*q + r receives from window rows r, r + stride, ... of outputs q, q - 1, ...: assemble each of
    # the stride x stride phases of dx from shifted copies of the routed gradients, then interleave the phases.
    q_h, q_w = -(-h // stride), -(-w // stride)
    rows = []
    for rh in range(stride):
        phases = []
        for rw in range(stride):
            phase = jnp.zeros((n, q_h, q_w, c), g.dtype)
            for th, kh in enumerate(range(rh, window, stride)):
                for tw, kw in enumerate(range(rw, window, stride)):
                    routed = jnp.where(first == kh * window + kw, g, zero)
                    config = [(0, 0, 0), (th, q_h - out_h - th, 0), (tw, q_w - out_w - tw, 0), (0, 0, 0)]
                    phase = phase + lax.pad(routed, zero, config)
            phases.append(phase)
        rows.append(jnp.stack(phases, axis=3))
    dx = jnp.stack(rows, axis=2).reshape(n, q_h * stride, q_w * stride, c)
    return (dx[:, :h, :w],)


max_pool_valid.defvjp(_max_pool_fwd, _max_pool_bwd)


def _same_window_counts(size: int, window: int) -> np.ndarray:
    """How many of a stride-1 SAME window's taps fall inside the input, per position along one axis."""
    pad_lo = (window - 1) // 2
    pos = np.arange(size)
    return (np.minimum(pos - pad_lo + window, size) - np.maximum(pos - pad_lo, 0)).astype(np.float32)


def avg_pool_same(x: jax.Array, window: int = 3, include_padding: bool = False) -> jax.Array:
    """The CPU kernel of `avg_pool`: separable sums of shifted views, divided by each window's count."""
    pad_lo, pad_hi = (window - 1) // 2, window // 2
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (pad_lo, pad_hi), (pad_lo, pad_hi), (0, 0)))
    # Separable: sum the window's rows, then its columns.
    rows = sum(padded[:, i : i + h] for i in range(window))
    total = sum(rows[:, :, j : j + w] for j in range(window))
    if include_padding:
        return total / (window * window)
    counts = np.outer(_same_window_counts(h, window), _same_window_counts(w, window))[None, :, :, None]
    return total * jnp.asarray(1.0 / counts, x.dtype)
