"""One-dimensional Winograd convolution F(m, r) for the 1xk and kx1 convs of the factorised Inception blocks.

F(m, r) computes m outputs of an r-tap correlation from m + r - 1 products instead of m * r (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016). Along one spatial axis the input is cut into tiles of m
outputs; each tile's m + r - 1 inputs go through the transform B^T, the kernel through G, and the m + r - 1
products become m + r - 1 batched matmuls over channels, which the transform A^T turns back into outputs:

    y_tile = A^T [(G w) * (B^T x_tile)]

The gradients are written the same way (custom VJP): the input gradient is the same algorithm run on the output
gradient with the flipped kernel, and the weight gradient is taken in the transformed domain, (G^T) sum over tiles
of (B^T x_tile) (A dy_tile). So all three passes do (m + r - 1) / (m r) of the direct convolution's multiplies.

Where it pays (2-core AVX-512 CPU, batch 8, forward plus both gradients, each pass jitted alone, medians of 7):
17x17 maps with 128-256 channels, F(3, 7), 1.7-3.0x faster than XLA's convolution (e.g. 192 -> 224 1x7: 30.5 ->
14.8 ms); 8x8 maps with 384-448 channels, F(2, 3), 1.1-1.7x. A v4 17x17-block chain (1x1, 1x7, 7x1 conv-BN-ReLU,
forward and backward) went from 109 to 66 ms, and the v4 train step at batch 8, 299x299 (huge-page malloc, two
separate processes each way) from medians of 4.07 and 4.12 s to 3.49 and 3.71 s. No gain on the v4 stem's 73x73
maps with 64 channels (XLA 109.4 ms, Winograd 107.9 ms), so `applies` requires wide layers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Interpolation points, smallest first: the small ones keep the transforms' coefficients, and so the rounding
# error, small (F(3, 7) uses the first eight plus the point at infinity).
_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 3, -3, Fraction(1, 3), Fraction(-1, 3))

# Output tile per kernel length. 7: F(3, 7) was as fast as F(4, 7) on the 17x17 layers with a third of its float32
# error (1e-5 against 3e-5 of the output's scale). 3: F(2, 3), the most accurate, was the fastest on one 8x8 layer
# (12.6 against 14.1 and 14.6 ms for F(3, 3), F(4, 3)) and 11% behind F(4, 3) on the other. 5: no network has 5-tap
# convs; F(3, 5) is tested, not timed.
TILE = {3: 2, 5: 3, 7: 3}
# The narrower of input and output channels from which the Winograd path is taken: 128-channel layers gained,
# 64-channel ones did not (see the module docstring).
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
    """Whether `conv1d` is the faster way to run this NHWC x HWIO convolution (explicit `pads`) on a CPU."""
    kh, kw, c_in, c_out = kernel_shape
    k = max(kh, kw)
    if not (strides == (1, 1) and min(kh, kw) == 1 and k in TILE):
        return False
    axis = 1 if kh > 1 else 2
    out = x_shape[axis] + sum(pads[axis - 1]) - k + 1
    return (
        jnp.dtype(dtype) == jnp.float32  # the transforms' rounding error grows too large in 16-bit types
        and min(c_in, c_out) >= MIN_CHANNELS
        and out >= 2 * TILE[k]  # one tile (a 3x3 map at 75x75 input) measured slower than the direct conv
    )


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


def _tiling(length: int, k: int, pads: tuple[int, int], m: int) -> tuple[int, int, tuple[int, int]]:
    """(output length, tile count, padding that makes every tile's input whole) along the convolved axis."""
    lo, hi = pads
    out = length + lo + hi - k + 1
    tiles = -(-out // m)
    return out, tiles, (lo, tiles * m + k - 1 - length - lo)


def _input_transform(x: jax.Array, axis: int, k: int, pads: tuple[int, int], m: int) -> jax.Array:
    """B^T applied to every tile: (n, N, H', W', C) with the tile index in place of `axis`."""
    _, _, b_t = transforms(m, k)
    _, tiles, tile_pads = _tiling(x.shape[axis], k, pads, m)
    widths = [(0, 0, 0)] * 4
    widths[axis] = (*tile_pads, 0)
    x = lax.pad(x, jnp.zeros((), x.dtype), widths)  # lax.pad, as a negative width (the input gradient's) crops
    parts = [lax.slice_in_dim(x, j, j + m * (tiles - 1) + 1, m, axis) for j in range(m + k - 1)]
    return _combine(parts, b_t)


def _rows(v: jax.Array) -> jax.Array:
    return v.reshape(v.shape[0], -1, v.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv1d(x: jax.Array, w: jax.Array, axis: int, pads: tuple[int, int]) -> jax.Array:
    """Stride-1 NHWC x HWIO convolution with a (1, k) kernel (`axis` 2) or a (k, 1) kernel (`axis` 1), padded by
    `pads` along that axis, computed with F(TILE[k], k)."""
    return _forward(x, w, axis, pads)


def _forward(x: jax.Array, w: jax.Array, axis: int, pads: tuple[int, int]) -> jax.Array:
    k = w.shape[axis - 1]
    m = TILE[k]
    a_t, g, _ = transforms(m, k)
    out, tiles, _ = _tiling(x.shape[axis], k, pads, m)
    v = _input_transform(x, axis, k, pads, m)
    u = _combine(list(w.reshape(k, *w.shape[2:])), g)
    products = lax.dot_general(_rows(v), u, (((2,), (1,)), ((0,), (0,))))
    products = products.reshape(*v.shape[:-1], u.shape[-1])
    y = _combine(list(products), a_t, axis=axis + 1)  # each tile's m outputs follow its index
    shape = list(y.shape)
    shape[axis : axis + 2] = [tiles * m]
    return lax.slice_in_dim(y.reshape(shape), 0, out, axis=axis)


def _conv1d_fwd(x, w, axis, pads):  # noqa: ANN001, ANN202
    return _forward(x, w, axis, pads), (x, w)


def _conv1d_bwd(axis, pads, residuals, g):  # noqa: ANN001, ANN202
    x, w = residuals
    k = w.shape[axis - 1]
    m = TILE[k]
    a_t, g_matrix, _ = transforms(m, k)
    # Input gradient: the full correlation of g with the flipped kernel, channels swapped; the padding that
    # makes its length the input's is (k - 1 - lo) before and whatever remains after.
    length, lo = x.shape[axis], pads[0]
    flipped = jnp.flip(w, axis - 1).transpose(0, 1, 3, 2)
    dx = conv1d(g, flipped, axis, (k - 1 - lo, length + lo - g.shape[axis]))
    # Weight gradient in the transformed domain: dU[p] = V[p]^T (A dy)[p], then dW = G^T dU.
    out, tiles, _ = _tiling(length, k, pads, m)
    widths = [(0, 0)] * 4
    widths[axis] = (0, tiles * m - out)
    g_tiles = jnp.pad(g, widths)
    shape = list(g_tiles.shape)
    shape[axis : axis + 1] = [tiles, m]
    g_tiles = g_tiles.reshape(shape)
    dm = _combine([lax.index_in_dim(g_tiles, i, axis + 1, keepdims=False) for i in range(m)], a_t.T)
    du = lax.dot_general(_rows(_input_transform(x, axis, k, pads, m)), _rows(dm), (((1,), (1,)), ((0,), (0,))))
    dw = _combine(list(du), g_matrix.T).reshape(w.shape)
    return dx, dw


conv1d.defvjp(_conv1d_fwd, _conv1d_bwd)
