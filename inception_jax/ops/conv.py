"""Convolution, NHWC x HWIO: the reference `lax.conv_general_dilated` and the CPU kernels that replace it where
XLA's CPU backend is slow. Same parameters, same results (to float rounding), gradients included.

The CPU kernels (`cpu_conv`), each exact:
- pointwise (1x1, stride 1) convolutions are 2-D matmuls with a written gradient (as convolutions, XLA's CPU
  backend transposes the input for the weight gradient and fuses its whole producer chain into that transpose);
- kernel taps that meet only padding (a kernel wider than its map) are dropped;
- strided convolutions take their input gradient as stride x stride ordinary convolutions, one per output phase,
  instead of XLA's input-dilated convolution, which computes mostly on inserted zeros;
- wide 1xk / kx1 convolutions and the 3x3 convolutions of the 35x35 maps run as Winograd convolutions
  (`winograd.py`, float32 only);
- the convolutions XLA runs itself read a stored input (`barrier.stored_input`).
Measurements: docs/performance.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from inception_jax.ops import winograd
from inception_jax.ops.barrier import stored_input
from inception_jax.ops.implementation import select

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    *,
    impl: str = "auto",
) -> jax.Array:
    """`lax.conv_general_dilated` (as `nn.Conv(conv_general_dilated=...)` calls it), with `impl` choosing the
    reference or the CPU kernels (`ops.IMPLEMENTATIONS`). Only plain NHWC x HWIO convolutions (no dilation or
    groups) have CPU kernels; any other convolution is the reference in every mode."""
    plain = (
        lhs.ndim == 4
        and all(d == 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1))))
        and feature_group_count == 1
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision,
        )  # fmt: skip
    strides = tuple(window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    padding = tuple(tuple(p) for p in padding)
    reference = functools.partial(reference_conv, strides=strides, padding=padding, precision=precision)
    cpu = functools.partial(cpu_conv, strides=strides, padding=padding, precision=precision)
    return select(impl, reference, cpu, lhs, rhs)


def reference_conv(
    x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...], precision: Any = None
) -> jax.Array:
    """The reference: XLA's own convolution (cuDNN on GPUs, the TPU's convolution units)."""
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


def cpu_conv(
    x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...], precision: Any = None
) -> jax.Array:
    """The CPU kernels: matmul, trimmed taps, Winograd, per-phase input gradients, stored inputs (module doc)."""
    w, padding = trim_padding_taps(x.shape[1:3], w, strides, padding)
    if w.shape[:2] == (1, 1) and strides == (1, 1) and padding == ((0, 0), (0, 0)):
        return pointwise(x, w[0, 0], precision)
    if winograd.applies(x.shape, w.shape, strides, padding, x.dtype):
        return winograd.conv(x, w, padding)
    # XLA's own convolution from here on: its weight gradient transposes the input, which must be a stored array.
    x = stored_input(x)
    if strides != (1, 1):
        return strided_conv(x, w, strides, padding, precision)
    return reference_conv(x, w, strides, padding, precision)


def trim_padding_taps(
    spatial: Sequence[int], w: jax.Array, strides: Sequence[int], pads: Sequence[Sequence[int]]
) -> tuple[jax.Array, tuple[tuple[int, int], ...]]:
    """(kernel, pads as tuples) without the kernel taps that meet only padding, for every output position.

    On maps smaller than the kernel (a 1x7 on the 3x3 maps of a 75x75 input, a 1x3 on 1x1 maps) those taps multiply
    zeros: dropping them is exact and leaves fewer taps to compute (a 1x3 on a 1x1 map becomes a matmul). Output j
    reads input s * j + i - lo with tap i, so only taps in [lo - s * (o - 1), lo + n - 1] ever read the input.
    """
    taps = []
    for n, k, s, (lo, hi) in zip(spatial, w.shape[:2], strides, pads, strict=True):
        out = (n + lo + hi - k) // s + 1
        if out < 1:  # an empty output (lax allows it): nothing to trim
            return w, tuple(tuple(p) for p in pads)
        taps.append((max(0, lo - s * (out - 1)), min(k - 1, lo + n - 1)))
    new_pads = []
    for axis, ((first, last), k, (lo, hi)) in enumerate(zip(taps, w.shape[:2], pads, strict=True)):
        if first > 0 or last < k - 1:
            w = lax.slice_in_dim(w, first, last + 1, axis=axis)
        new_pads.append((lo - first, hi - (k - 1 - last)))
    return w, tuple(new_pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise(x: jax.Array, w: jax.Array, precision: Any = None) -> jax.Array:
    """A 1x1 convolution, NHWC x IO, as one (N*H*W, I) x (I, O) matmul, gradients included.

    Flattened to two dimensions: differentiated as a 4-D dot, the weight gradient contracts three axes, and XLA's
    CPU backend copied the output gradient into a transposed buffer for it; as 2-D dots Eigen reads both operands
    in place. The custom gradient keeps the 4-D input as the residual, so
    that several 1x1 convs of one input share it (JAX would count each one's flattened view as a separate
    activation; XLA's reshapes are free either way).
    """
    return _matmul(x, w, precision)


def _matmul(x: jax.Array, w: jax.Array, precision: Any) -> jax.Array:
    out = lax.dot_general(x.reshape(-1, x.shape[-1]), w, (((1,), (0,)), ((), ())), precision=precision)
    return out.reshape(*x.shape[:-1], w.shape[-1])


def _pointwise_fwd(x, w, precision):  # noqa: ANN001, ANN202
    return _matmul(x, w, precision), (x, w)


def _pointwise_bwd(precision, residuals, g):  # noqa: ANN001, ANN202
    x, w = residuals
    g2 = g.reshape(-1, g.shape[-1])
    dx = lax.dot_general(g2, w, (((1,), (1,)), ((), ())), precision=precision).reshape(x.shape)
    dw = lax.dot_general(x.reshape(-1, x.shape[-1]), g2, (((0,), (0,)), ((), ())), precision=precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def strided_conv(
    x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: tuple[tuple[int, int], ...], precision: Any = None
) -> jax.Array:
    """NHWC x HWIO convolution with `strides` and explicit `pads`, whose input gradient is computed per phase."""
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


def _strided_conv_fwd(x, w, strides, pads, precision):  # noqa: ANN001, ANN202
    return strided_conv(x, w, strides, pads, precision), (x, w)


def _strided_conv_bwd(strides, pads, precision, residuals, g):  # noqa: ANN001, ANN202
    x, w = residuals
    _, weight_vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC), w)
    return input_gradient(g, w, x.shape, strides, pads, precision), weight_vjp(g)[0]


strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def input_gradient(
    g: jax.Array,
    w: jax.Array,
    x_shape: Sequence[int],
    strides: tuple[int, int],
    pads: Sequence[tuple[int, int]],
    precision: Any = None,
) -> jax.Array:
    """d(conv(x, w))/dx applied to the output cotangent `g`, by phases.

    With stride s, input row s*q + r only meets kernel rows r, r + s, r + 2s, ...; so each of the s x s phases of
    the (padded) input gradient is a stride-1 full convolution of `g` with that subset of the flipped kernel, and
    the phases interleave into the result.
    """
    n, h, w_in, c_in = x_shape
    sh, sw = strides
    (lo_h, hi_h), (lo_w, hi_w) = pads
    q_h, q_w = -(-(h + lo_h + hi_h) // sh), -(-(w_in + lo_w + hi_w) // sw)
    out_h, out_w = g.shape[1:3]
    rows = []
    for rh in range(sh):
        phase_row = []
        for rw in range(sw):
            sub = w[rh::sh, rw::sw]
            th, tw = sub.shape[:2]
            if th == 0 or tw == 0:
                phase_row.append(jnp.zeros((n, q_h, q_w, c_in), g.dtype))
                continue
            kernel = jnp.flip(sub, (0, 1)).transpose(0, 1, 3, 2)
            phase_pads = [(th - 1, q_h - out_h), (tw - 1, q_w - out_w)]
            phase_row.append(lax.conv_general_dilated(g, kernel, (1, 1), phase_pads, dimension_numbers=_NHWC,
                                                      precision=precision))  # fmt: skip
        rows.append(jnp.stack(phase_row, axis=3))
    padded = jnp.stack(rows, axis=2).reshape(n, q_h * sh, q_w * sw, c_in)
    return padded[:, lo_h : lo_h + h, lo_w : lo_w + w_in]
