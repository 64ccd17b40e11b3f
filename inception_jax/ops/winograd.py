"""Winograd convolution, a CPU kernel: F(m, r) along one axis for the 1xk and kx1 convs of the factorised
Inception blocks, and F(m x m, r x r) for the 3x3 convs of the 35x35 blocks.

F(m, r) computes m outputs of an r-tap correlation from m + r - 1 products instead of m * r (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016). Along one spatial axis the input is cut into tiles of m
outputs; each tile's m + r - 1 inputs go through the transform B^T, the kernel through G, and the m + r - 1
products become m + r - 1 batched matmuls over channels, which the transform A^T turns back into outputs:

    y_tile = A^T [(G w) * (B^T x_tile)]

The two-dimensional version nests the same transforms along both axes: (m + r - 1)^2 matmuls for m^2 outputs
(36 for 16 with F(4x4, 3x3), against 144). The gradients are written the same way (custom VJP): the input
gradient is the same algorithm run on the output gradient with the flipped kernel, and the weight gradient is taken
in the transformed domain, G^T [sum over tiles of (B^T x_tile) (A dy_tile)] (and G on the right in two dimensions).
So all three passes save the same share of multiplies. `applies` limits it to the shapes where it measured faster
than XLA's convolution on a 2-core CPU (docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from inception_jax.ops.barrier import materialise

# Interpolation points, smallest first: the small ones keep the transforms' coefficients, and so the rounding
# error, small (F(3, 7) uses the first eight plus the point at infinity).
_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 3, -3, Fraction(1, 3), Fraction(-1, 3))

# Output tile per kernel length, one-dimensional F(m, k): the fastest of the tiles tried with the smallest float32
# error (F(3, 7) has a third of F(4, 7)'s). F(3, 5) is tested, not timed: no network has 5-tap convs.
TILE = {3: 2, 5: 3, 7: 3}
# Two-dimensional F(m x m, k x k): output tile per kernel size (float32 error 1e-5 of the output's scale).
TILE_2D = {3: 4}
# Where F(4x4, 3x3) measured faster than XLA: maps of 24-48 pixels with at least 48 channels. On larger maps the
# transforms' memory traffic outweighs the 4x fewer multiplies; on 8x8 maps the tiles are too few.
MIN_CHANNELS_2D = 48
MAP_2D = (24, 48)
# The narrower of input and output channels from which the one-dimensional path is taken (128-channel layers
# gained, 64-channel ones did not).
MIN_CHANNELS = 128


@functools.cache
def transforms(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, G, B^T) of F(m, r) as float64 arrays of shapes (m, n), (n, r), (n, n), n = m + r - 1.

    A^T and G are the Toom-Cook evaluation matrices at `_POINTS[:n - 1]` and infinity; B^T is solved exactly
    (rational arithmetic) from the defining identity sum_p A^T[i, p] G[p, k] B^T[p, j] = [j == i + k], which makes
    y_i = sum_k w_k x_{i+k} hold for every x and w.
    """
    n = m + r - 1
    if n - 1 > len(_POINTS):
        raise ValueError(f"F({m}, {r}) needs {n - 1} interpolation points; only {len(_POINTS)} are defined")
    points = [Fraction(p) for p in _POINTS[: n - 1]]
    a_t = [[p**i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = [[p**k for k in range(r)] for p in points] + [[Fraction(int(k == r - 1)) for k in range(r)]]
    equations = [[a_t[i][p] * g[p][k] for p in range(n)] for i in range(m) for k in range(r)]
    b_t_columns = []
    for j in range(n):
        rhs = [Fraction(int(j == i + k)) for i in range(m) for k in range(r)]
        b_t_columns.append(_solve_exact(equations, rhs))
    b_t = [[b_t_columns[j][p] for j in range(n)] for p in range(n)]
    # Scale each B^T row to a largest entry of 1 and fold the factor into G (applied once, to the weights).
    for p in range(n):
        scale = max(abs(v) for v in b_t[p])
        b_t[p] = [v / scale for v in b_t[p]]
        g[p] = [v * scale for v in g[p]]
    return (np.array(a_t, dtype=np.float64), np.array(g, dtype=np.float64), np.array(b_t, dtype=np.float64))


def _solve_exact(rows: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """The solution of a consistent (possibly overdetermined) rational linear system with a unique solution."""
    width = len(rows[0])
    aug = [list(row) + [b] for row, b in zip(rows, rhs, strict=True)]
    for col in range(width):  # Gauss-Jordan: column col's pivot ends up in row col
        pivot = next((i for i in range(col, len(aug)) if aug[i][col] != 0), None)
        if pivot is None:
            raise ValueError("Winograd transform is not uniquely determined (repeated interpolation points?)")
        aug[col], aug[pivot] = aug[pivot], aug[col]
        aug[col] = [v / aug[col][col] for v in aug[col]]
        for i in range(len(aug)):
            if i != col and aug[i][col] != 0:
                factor = aug[i][col]
                aug[i] = [a - factor * b for a, b in zip(aug[i], aug[col], strict=True)]
    if any(row[-1] != 0 for row in aug[width:]):
        raise ValueError("Winograd identity has no solution for these points")
    return [aug[i][-1] for i in range(width)]


def applies(
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    strides: tuple[int, int],
    pads: Sequence[tuple[int, int]],
    dtype: jnp.dtype,
) -> bool:
    """Whether `conv` is the faster way to run this NHWC x HWIO convolution (explicit `pads`) on a CPU; never for
    16-bit types, whose transforms round too much."""
    kh, kw, c_in, c_out = kernel_shape
    if strides != (1, 1) or jnp.dtype(dtype) != jnp.float32:  # 16-bit types: the transforms round too much
        return False
    out = [x_shape[axis] + sum(pads[axis - 1]) - k + 1 for axis, k in ((1, kh), (2, kw))]
    if min(kh, kw) == 1 and max(kh, kw) in TILE:
        k = max(kh, kw)
        return (
            min(c_in, c_out) >= MIN_CHANNELS
            and out[0 if kh > 1 else 1] >= 2 * TILE[k]  # one tile (3x3 maps at 75x75 input) measured slower
        )
    if kh == kw and kh in TILE_2D:
        return min(c_in, c_out) >= MIN_CHANNELS_2D and all(MAP_2D[0] <= o <= MAP_2D[1] for o in out)
    return False


def _combine(parts: list[jax.Array], matrix: np.ndarray, axis: int = 0) -> jax.Array:
    """stack([sum_j matrix[p, j] * parts[j] for each row p], axis).

    Written as one broadcast multiply-add over all rows so that XLA emits a single loop fusion; a stack of per-row
    sums becomes one fusion per row plus a concatenation that copies everything again.
    """
    total = None
    for j, part in enumerate(parts):
        column = matrix[:, j]
        if not column.any():
            continue
        shape = [1] * (part.ndim + 1)
        shape[axis] = len(column)
        term = jnp.asarray(column.astype(np.float32)).reshape(shape).astype(part.dtype) * jnp.expand_dims(part, axis)
        total = term if total is None else total + term
    return total


class _Axis(NamedTuple):
    """How one spatial axis is tiled: NHWC `axis`, kernel length `k`, output tile `m`, output length, tile count,
    and the padding that makes every tile's input whole."""

    axis: int
    k: int
    m: int
    out: int
    tiles: int
    pads: tuple[int, int]


def _plan(x_shape: Sequence[int], kernel: Sequence[int], pads: Sequence[tuple[int, int]]) -> list[_Axis]:
    """The transformed axes (kernel length above 1) of a convolution of `x_shape` by `kernel`, padded by `pads`."""
    plan = []
    for axis, (k, (lo, hi)) in enumerate(zip(kernel, pads, strict=True), start=1):
        if k == 1:
            continue
        m = (TILE_2D if min(kernel) > 1 else TILE)[k]
        out = x_shape[axis] + lo + hi - k + 1
        tiles = -(-out // m)
        plan.append(_Axis(axis, k, m, out, tiles, (lo, tiles * m + k - 1 - x_shape[axis] - lo)))
    return plan


def _pad(x: jax.Array, widths: Sequence[tuple[int, int, int]]) -> jax.Array:
    """lax.pad with zeros: negative widths crop (the input gradient's paddings can be negative)."""
    return lax.pad(x, jnp.zeros((), x.dtype), widths)


def _input_transform(x: jax.Array, kernel: Sequence[int], pads: Sequence[tuple[int, int]]) -> jax.Array:
    """B^T applied to every tile along each transformed axis: (n_1, [n_2,] N, H', W', C), with tile indices in
    place of those axes. The 1-tap axis of a 1xk or kx1 kernel only gets its padding."""
    plan = _plan(x.shape, kernel, pads)
    x = _pad(x, [(0, 0, 0), *((0, 0, 0) if k > 1 else (*p, 0) for k, p in zip(kernel, pads, strict=True)), (0, 0, 0)])
    for lead, a in enumerate(plan):
        b_t = transforms(a.m, a.k)[2]
        widths = [(0, 0, 0)] * x.ndim
        widths[lead + a.axis] = (*a.pads, 0)
        x = _pad(x, widths)
        span = a.m * (a.tiles - 1) + 1
        x = _combine([lax.slice_in_dim(x, j, j + span, a.m, lead + a.axis) for j in range(a.m + a.k - 1)], b_t, lead)
    return x


def _kernel_transform(
    u: jax.Array, plan: Sequence[_Axis], transposed: bool = False, flipped: bool = False
) -> jax.Array:
    """G applied along each leading axis of `u` (taps, one axis per entry of `plan`, then C_in, C_out); with
    `flipped`, G of the kernel reversed along its taps (G with its columns reversed, so no reversed copy is made);
    with `transposed`, G^T, which takes a weight gradient from the transformed domain back to taps."""
    for position, a in enumerate(plan):
        g = transforms(a.m, a.k)[1]
        g = g[:, ::-1] if flipped else g
        parts = [lax.index_in_dim(u, j, position, keepdims=False) for j in range(u.shape[position])]
        u = _combine(parts, g.T if transposed else g, axis=position)
    return u


def _rows(v: jax.Array, batch_dims: int) -> jax.Array:
    return v.reshape(int(np.prod(v.shape[:batch_dims])), -1, v.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Stride-1 NHWC x HWIO convolution padded by `pads` = ((top, bottom), (left, right)), computed with Winograd
    transforms along each spatial axis whose kernel length is above 1: a 1xk or kx1 kernel as the one-dimensional
    F(TILE[k], k), a kxk kernel as the two-dimensional F(m x m, k x k) with m = TILE_2D[k]."""
    return _forward(x, w, pads)


def _forward(
    x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]], flipped: bool = False
) -> jax.Array:
    """The convolution of `x` by `w`; with `flipped`, by `w` reversed along its taps with its channel axes swapped
    (the input gradient), read from `w` as it is (a transposed copy of the kernel, fused into its transform, was
    slow)."""
    plan = _plan(x.shape, w.shape[:2], pads)
    v = _input_transform(x, w.shape[:2], pads)
    u = _kernel_transform(w.reshape(*(a.k for a in plan), *w.shape[2:]), plan, flipped=flipped)
    batch = len(plan)
    products = lax.dot_general(_rows(v, batch), _rows(u, batch), (((2,), (2 if flipped else 1,)), ((0,), (0,))))
    y = products.reshape(*v.shape[:-1], w.shape[-2 if flipped else -1])
    for a in plan:  # A^T: each tile's m outputs follow its tile index; then the ragged end is cut off
        batch -= 1
        y = _combine(list(y), transforms(a.m, a.k)[0], axis=batch + a.axis + 1)
        shape = list(y.shape)
        shape[batch + a.axis : batch + a.axis + 2] = [a.tiles * a.m]
        y = lax.slice_in_dim(y.reshape(shape), 0, a.out, axis=batch + a.axis)
    # Materialised: XLA's CPU backend otherwise recomputes the output transform inside consumers, e.g. in the
    # transposed copy it makes for a following strided conv's weight gradient.
    return materialise(y)


def _conv_fwd(x, w, pads):  # noqa: ANN001, ANN202
    return _forward(x, w, pads), (x, w)


def _conv_bwd(pads, residuals, g):  # noqa: ANN001, ANN202
    x, w = residuals
    plan = _plan(x.shape, w.shape[:2], pads)
    # Input gradient: the correlation of g with the flipped kernel, channels swapped, padded by k - 1 - pad on
    # each side (negative where the forward padding exceeded k - 1, which crops).
    dx = _forward(g, w, tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w.shape[:2], pads, strict=True)),
                  flipped=True)  # fmt: skip
    # Weight gradient in the transformed domain: dU[p] = V[p]^T (A dy)[p] for each transform index p, then
    # dW = G^T dU (G^T dU G in two dimensions).
    dm = g
    for lead, a in enumerate(plan):
        widths = [(0, 0, 0)] * dm.ndim
        widths[lead + a.axis] = (0, a.tiles * a.m - a.out, 0)
        dm = _pad(dm, widths)
        shape = list(dm.shape)
        shape[lead + a.axis : lead + a.axis + 1] = [a.tiles, a.m]
        dm = dm.reshape(shape)
        parts = [lax.index_in_dim(dm, i, lead + a.axis + 1, keepdims=False) for i in range(a.m)]
        dm = _combine(parts, transforms(a.m, a.k)[0].T, axis=lead)
    v = _input_transform(x, w.shape[:2], pads)
    du = lax.dot_general(_rows(v, len(plan)), _rows(dm, len(plan)), (((1,), (1,)), ((0,), (0,))))
    dw = _kernel_transform(du.reshape(*v.shape[: len(plan)], *du.shape[1:]), plan, transposed=True)
    return dx, dw.reshape(w.shape)


conv.defvjp(_conv_fwd, _conv_bwd)
