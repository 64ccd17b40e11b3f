"""The ops' CPU kernels equal their references, values and gradients: the convolution and pools equal the lax/flax
operations they replace, the fusion barrier is an exact identity that stops XLA recomputing a residual stack, and
BatchNorm + ReLU equals flax's, statistics and gradients included, in both implementations; and the CPU kernels do
what they exist for, in XLA's compiled CPU programs."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import relative_error
from jax import lax

from inception_jax.models import layers
from inception_jax.ops import barrier, pooling, winograd
from inception_jax.ops import conv as conv_ops

NHWC = ("NHWC", "HWIO", "NHWC")
cpu_conv = functools.partial(conv_ops.conv_general_dilated, impl="cpu")  # lax.conv_general_dilated's signature


def random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# (input shape, kernel (h, w), output channels, stride, padding): pointwise, ordinary, asymmetric, strided
# with odd and even sizes, a 1x1 stride-2 conv (a phase whose kernel subset is empty) and stride 3.
CONVS = [
    ((2, 7, 7, 5), (1, 1), 6, 1, "SAME"),
    ((2, 9, 8, 5), (3, 3), 6, 1, "SAME"),
    ((2, 9, 9, 5), (1, 7), 4, 1, "SAME"),
    ((2, 11, 11, 4), (3, 3), 6, 2, "VALID"),
    ((2, 10, 13, 4), (3, 3), 6, 2, "VALID"),
    ((2, 10, 9, 4), (3, 3), 5, 2, "SAME"),
    ((1, 8, 8, 3), (1, 1), 4, 2, "SAME"),
    ((1, 13, 12, 3), (5, 5), 4, 3, "VALID"),
    ((1, 9, 9, 3), (3, 3), 4, 2, ((2, 0), (1, 2))),
    # Maps smaller than the kernel, whose taps that meet only padding are dropped: to a 1x1 (a matmul), to 1x5,
    # on both axes, with asymmetric padding, and strided.
    ((2, 1, 1, 6), (1, 3), 5, 1, "SAME"),
    ((2, 3, 3, 5), (1, 7), 4, 1, "SAME"),
    ((2, 3, 2, 5), (7, 7), 4, 1, "SAME"),
    ((1, 2, 3, 3), (5, 3), 4, 1, ((4, 1), (0, 2))),
    ((1, 2, 2, 3), (5, 5), 4, 2, "SAME"),
    # A padded 1x1 (not a plain matmul).
    ((1, 4, 4, 3), (1, 1), 5, 1, ((1, 1), (0, 2))),
]


# Inside the sizes the Winograd path takes (winograd.MIN_CHANNELS, MIN_CHANNELS_2D, MAP_2D): 1x7, 7x1, 1x5, 1x3,
# 3x1 and 3x3, with SAME, VALID, explicit and negative padding (which crops), on both axes, with ragged last tiles.
WINOGRAD_CONVS = [
    ((1, 7, 9, 128), (1, 7), 130, 1, "SAME"),
    ((1, 12, 6, 130), (7, 1), 128, 1, "VALID"),
    ((1, 9, 6, 128), (7, 1), 128, 1, ((1, 2), (0, 3))),
    ((1, 6, 10, 128), (1, 5), 128, 1, ((-1, 2), (3, -2))),
    ((1, 5, 6, 128), (1, 3), 129, 1, "SAME"),
    ((1, 5, 6, 128), (3, 1), 128, 1, ((2, 0), (0, 1))),
    ((1, 26, 25, 48), (3, 3), 50, 1, "SAME"),
    ((1, 27, 30, 49), (3, 3), 48, 1, "VALID"),
    ((1, 25, 26, 48), (3, 3), 48, 1, ((1, 2), (0, 1))),
    ((1, 28, 27, 48), (3, 3), 48, 1, ((2, -1), (-1, 2))),
]


def check_conv_against_lax(x_shape, kernel, features, stride, padding, tolerance):
    x, w = random(x_shape, 0), random((*kernel, x_shape[-1], features), 1)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

    def loss(conv, x, w):
        y = conv(x, w, (stride, stride), padding, dimension_numbers=dn)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))), y

    (_, y), grads = jax.jit(jax.value_and_grad(lambda x, w: loss(cpu_conv, x, w),
                                               argnums=(0, 1), has_aux=True))(x, w)  # fmt: skip
    (_, y_ref), grads_ref = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w),
                                               argnums=(0, 1), has_aux=True)(x, w)  # fmt: skip
    assert y.shape == y_ref.shape
    assert relative_error(y, y_ref) < tolerance
    assert relative_error(grads[0], grads_ref[0]) < tolerance, "input gradient"
    assert relative_error(grads[1], grads_ref[1]) < tolerance, "kernel gradient"


@pytest.mark.parametrize("x_shape,kernel,features,stride,padding", CONVS)
def test_conv_matches_lax_values_and_gradients(x_shape, kernel, features, stride, padding):
    check_conv_against_lax(x_shape, kernel, features, stride, padding, tolerance=1e-5)


@pytest.mark.parametrize("x_shape,kernel,features,stride,padding", WINOGRAD_CONVS)
def test_winograd_conv_matches_lax_values_and_gradients(x_shape, kernel, features, stride, padding):
    pads = padding if not isinstance(padding, str) else lax.padtype_to_pads(x_shape[1:3], kernel, (1, 1), padding)
    assert winograd.applies(x_shape, (*kernel, x_shape[-1], features), (1, 1), pads, jnp.float32)
    # Winograd's transforms round more than a direct sum: 1e-5 of the output's scale measured for F(3, 7) and
    # F(4x4, 3x3).
    check_conv_against_lax(x_shape, kernel, features, stride, padding, tolerance=5e-5)


@pytest.mark.parametrize("m,r", [(2, 3), (3, 5), (3, 7), (4, 3), (2, 7)])
def test_winograd_transforms_compute_the_correlation(m, r):
    """A^T [(G w) * (B^T d)] equals y_i = sum_k w_k d_(i+k) to float64 rounding."""
    a_t, g, b_t = winograd.transforms(m, r)
    assert (a_t.shape, g.shape, b_t.shape) == ((m, m + r - 1), (m + r - 1, r), (m + r - 1, m + r - 1))
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, w = rng.standard_normal(m + r - 1), rng.standard_normal(r)
        direct = [sum(w[k] * d[i + k] for k in range(r)) for i in range(m)]
        np.testing.assert_allclose(a_t @ ((g @ w) * (b_t @ d)), direct, rtol=1e-10, atol=1e-10)


def test_winograd_applies_only_to_wide_float32_cpu_convs():
    x = jnp.zeros((1, 9, 9, 128))
    dn = lax.conv_dimension_numbers(x.shape, (1, 7, 128, 128), NHWC)
    conv = lambda x, w: cpu_conv(x, w, (1, 1), "SAME", dimension_numbers=dn)  # noqa: E731
    w = jnp.zeros((1, 7, 128, 128))
    assert "dot_general" in str(jax.make_jaxpr(conv)(x, w))
    assert "dot_general" not in str(jax.make_jaxpr(conv)(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)))
    narrow = jnp.zeros((1, 9, 9, 64))
    assert "dot_general" not in str(jax.make_jaxpr(conv)(narrow, jnp.zeros((1, 7, 64, 128))))
    one_tile = jnp.zeros((1, 3, 3, 128))  # the 17x17 grid at 75x75 input
    assert "dot_general" not in str(jax.make_jaxpr(conv)(one_tile, w))
    # 3x3: the 35x35 grid from 48 channels; not the stem's large maps, not 8x8 maps, not 32 channels.
    for shape, channels, expected in [((1, 35, 35, 64), 96, True), ((1, 73, 73, 64), 96, False),
                                      ((1, 8, 8, 448), 384, False), ((1, 35, 35, 32), 32, False)]:  # fmt: skip
        x3, w3 = jnp.zeros(shape), jnp.zeros((3, 3, shape[-1], channels))
        dn3 = lax.conv_dimension_numbers(x3.shape, w3.shape, NHWC)
        jaxpr = str(jax.make_jaxpr(lambda x, w, dn3=dn3: cpu_conv(
            x, w, (1, 1), "SAME", dimension_numbers=dn3))(x3, w3))  # fmt: skip
        assert ("dot_general" in jaxpr) == expected, (shape, channels)
    # In "auto", lowered for a GPU, the direct convolution is all that is left.
    auto = lambda x, w: conv_ops.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)  # noqa: E731
    for platform, winograd_expected in (("cpu", True), ("cuda", False)):
        module = jax.export.export(jax.jit(auto), platforms=[platform])(x, w).mlir_module()
        assert ("dot_general" in module) == winograd_expected, platform


def test_conv_takes_the_fast_paths():
    """Pointwise convs become matmuls; strided convs' input gradients are not input-dilated convolutions."""
    x = jnp.zeros((1, 9, 9, 4))
    dn = lax.conv_dimension_numbers(x.shape, (1, 1, 4, 8), NHWC)
    conv = lambda stride: lambda x, w: cpu_conv(x, w, stride, "VALID", dimension_numbers=dn)
    pointwise = str(jax.make_jaxpr(conv((1, 1)))(x, jnp.zeros((1, 1, 4, 8))))
    assert "dot_general" in pointwise and "conv_general_dilated" not in pointwise
    strided = str(jax.make_jaxpr(jax.grad(lambda x, w: conv((2, 2))(x, w).sum()))(x, jnp.zeros((3, 3, 4, 8))))
    assert "lhs_dilation=(1, 1)" in strided and "lhs_dilation=(2, 2)" not in strided


def test_conv_drops_the_taps_that_meet_only_padding():
    """A 1x3 on a 1x1 map (Inception-C at 75x75 input) is a matmul with the centre tap; a 1x7 on a 3x3 map
    (Inception-B there) a 1x5; on a 7x7 map all seven taps stay."""

    def operations(x_shape, kernel):
        x, w = jnp.zeros(x_shape), jnp.zeros((*kernel, x_shape[-1], 8))
        dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
        conv = lambda x, w: cpu_conv(x, w, (1, 1), "SAME", dimension_numbers=dn)  # noqa: E731
        return [(e.primitive.name, [v.aval.shape for v in e.invars]) for e in jax.make_jaxpr(conv)(x, w).eqns]

    centre = operations((2, 1, 1, 4), (1, 3))
    assert ("custom_vjp_call", [(2, 1, 1, 4), (4, 8)]) in centre  # `pointwise`
    assert not any(name == "conv_general_dilated" for name, _ in centre)
    assert ("conv_general_dilated", [(2, 3, 3, 4), (1, 5, 4, 8)]) in operations((2, 3, 3, 4), (1, 7))
    untouched = operations((2, 7, 7, 4), (1, 7))
    convs = [op for op in untouched if op[0] == "conv_general_dilated"]
    assert convs == [("conv_general_dilated", [(2, 7, 7, 4), (1, 7, 4, 8)])]
    assert not any(name == "slice" for name, _ in untouched)


def test_pointwise_conv_weight_gradient_reads_operands_in_place():
    """Differentiated as a 4-D dot, a 1x1 conv's weight gradient made XLA's CPU backend copy the output gradient
    (and the input) into transposed (channels, pixels) buffers; as a 2-D dot it reads them as they are."""
    x, g = random((2, 9, 9, 16), 6), random((2, 9, 9, 16), 7)
    w1, w2 = random((1, 1, 16, 8), 8) * 0.3, random((1, 1, 8, 16), 9) * 0.3
    conv = lambda x, w: cpu_conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    loss = lambda x, w1, w2: jnp.sum(jax.nn.relu(x + 0.2 * conv(jax.nn.relu(conv(x, w1)), w2)) * g)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, w1, w2).compile().as_text()
    assert not re.search(r"f32\[(8|16),162\]", hlo), "a transposed copy of an activation or its gradient"
    ref = lambda x, w1, w2: jnp.sum(jax.nn.relu(x + 0.2 * lax.conv_general_dilated(
        jax.nn.relu(lax.conv_general_dilated(x, w1, (1, 1), "SAME", dimension_numbers=NHWC)), w2, (1, 1), "SAME",
        dimension_numbers=NHWC)) * g)  # fmt: skip
    for ours, theirs in zip(jax.grad(loss, (0, 1, 2))(x, w1, w2), jax.grad(ref, (0, 1, 2))(x, w1, w2), strict=True):
        assert relative_error(ours, theirs) < 1e-5


@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (2, 10, 11, 4), (1, 3, 3, 2), (2, 35, 35, 3)])
def test_max_pool_matches_flax_with_ties(shape):
    x = random(shape, 2)
    x = jnp.where(x < 0.3, 0.0, jnp.round(x * 2) / 2)  # ReLU zeros and repeated values: windows with ties
    c = random(((shape[0], (shape[1] - 3) // 2 + 1, (shape[2] - 3) // 2 + 1, shape[3])), 3)
    ours = lambda x: jnp.sum(pooling.max_pool_valid(x, 3, 2) * c)
    ref = lambda x: jnp.sum(nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID") * c)
    np.testing.assert_array_equal(pooling.max_pool_valid(x, 3, 2), nn.max_pool(x, (3, 3), (2, 2), "VALID"))
    # Each window's gradient goes to exactly one input: its first maximum, as in TensorFlow and flax.
    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(ref)(x), atol=1e-6)


def test_max_pool_gradient_finds_each_maximum_once():
    """The gradient routes through one materialised argmax per window: fused into the input-sized gradient, each
    input element re-derived the maxima of all the windows it belongs to (5.6x slower at 147x147x64)."""
    x, c = random((2, 35, 35, 8), 4), random((2, 17, 17, 8), 5)
    loss = lambda x: jnp.sum(pooling.max_pool_valid(jax.nn.relu(1.5 * x + 0.1), 3, 2) * c)
    hlo = jax.jit(jax.grad(loss)).lower(x).compile().as_text()
    computations = dict(re.findall(r"\n(%?[\w.-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S))
    input_sized = [computations[name] for name in re.findall(r"= f32\[2,35,35,8\]\S* fusion\(.*calls=(%?[\w.-]+)", hlo)]
    assert input_sized, "expected the gradient to be computed by a fusion"
    for body in input_sized:
        assert not re.search(r"f32\[2,17,17,8\]\S* maximum\(", body)
    np.testing.assert_allclose(
        jax.grad(loss)(x),
        jax.grad(
            lambda x: jnp.sum(nn.max_pool(jax.nn.relu(1.5 * x + 0.1), (3, 3), strides=(2, 2), padding="VALID") * c)
        )(x),
        atol=1e-6,
    )


@pytest.mark.parametrize("include_padding", [False, True])
@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (2, 10, 11, 4), (1, 1, 2, 2), (1, 3, 3, 2)])
def test_avg_pool_matches_flax(shape, include_padding):
    x = random(shape, 4)
    c = random(shape, 5)
    ours = lambda x: pooling.avg_pool_same(x, 3, include_padding)
    ref = lambda x: nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=include_padding)
    np.testing.assert_allclose(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(ours(x) * c))(x)
    np.testing.assert_allclose(grad, jax.grad(lambda x: jnp.sum(ref(x) * c))(x), rtol=1e-5, atol=1e-6)


def test_winograd_output_transform_runs_once():
    """The products of a Winograd conv are turned into its output by one fusion; left to itself XLA's CPU backend
    recomputed that output transform in each consumer (here also in the transposed copy a following strided conv's
    weight gradient reads, and in the ReLU's gradient)."""
    x, w1, w2 = random((2, 35, 35, 48), 10), random((3, 3, 48, 48), 11) * 0.1, random((3, 3, 48, 64), 12) * 0.1
    assert winograd.applies(x.shape, w1.shape, (1, 1), ((1, 1), (1, 1)), x.dtype)
    conv = lambda x, w, s, p: cpu_conv(x, w, s, p, dimension_numbers=NHWC)
    hidden = lambda x, w1: jax.nn.relu(conv(x, w1, (1, 1), "SAME") * 1.2 + 0.1)
    loss = lambda x, w1, w2: jnp.sum(conv(hidden(x, w1), w2, (2, 2), "VALID") ** 2)
    hlo = jax.jit(jax.grad(loss, argnums=(1, 2))).lower(x, w1, w2).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    # The forward products: 6x6 transform points x (2 images x 9 x 9 tiles) x 48 channels.
    (products,) = re.findall(r"%([\w.-]+) = f32\[36,162,48\]\S* dot\(", entry)
    readers = [line for line in entry.splitlines() if re.search(rf"%{re.escape(products)}[,)]", line)]
    assert len([line for line in readers if " fusion(" in line]) == 1, readers


@pytest.mark.slow
def test_inception_a_block_is_the_same_with_cpu_kernels(monkeypatch):
    """A whole v4 Inception-A block (Fig. 4) at its 35x35 size, where the CPU kernels run its three 3x3 convs as
    F(4x4, 3x3) and its 1x1s as matmuls: outputs, BN statistics and parameter gradients equal the reference's."""
    from inception_jax.models import inception_v4

    x = random((2, 35, 35, 384), 6)
    variables = inception_v4.InceptionA(layers.LayerConfig()).init(jax.random.key(0), x, train=True)
    winograd_calls = []
    original = winograd.conv
    monkeypatch.setattr(winograd, "conv", lambda *a: winograd_calls.append(a[1].shape) or original(*a))

    def run(impl):
        block = inception_v4.InceptionA(layers.LayerConfig(ops=impl))

        def loss(params):
            y, updates = block.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))), (y, updates)

        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    grads, (y, stats) = run("cpu")
    assert winograd_calls == [(3, 3, 64, 96), (3, 3, 64, 96), (3, 3, 96, 96)]
    grads_ref, (y_ref, stats_ref) = run("reference")
    assert relative_error(y, y_ref) < 5e-5
    for tree, ref in ((grads, grads_ref), (stats, stats_ref)):
        for leaf, leaf_ref in zip(jax.tree.leaves(tree), jax.tree.leaves(ref), strict=True):
            assert relative_error(leaf, leaf_ref) < 5e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_fusion_barrier_is_an_exact_identity(dtype):
    specials = [0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 1e-40, 6e-8, -6e4]
    x = jnp.concatenate([jnp.asarray(specials, dtype), random((4, 7), 8).astype(dtype).ravel()])
    y = jax.jit(barrier.fusion_barrier)(x)
    assert y.dtype == x.dtype
    # Bit for bit, so -0.0, NaN payloads and subnormals survive too.
    bits = jnp.uint16 if x.itemsize == 2 else jnp.uint32
    np.testing.assert_array_equal(lax.bitcast_convert_type(y, bits), lax.bitcast_convert_type(x, bits))
    c = random((40,), 9)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(barrier.fusion_barrier(v) * c)))(random((40,), 10))
    np.testing.assert_array_equal(grad, c)


def residual_stack_loss(params, x, with_barrier: bool):
    for p in params:
        x = jax.nn.relu(x + 0.1 * (jax.nn.relu(x @ p["down"]) @ p["up"] + p["bias"]))
        x = barrier.residual(x, impl="cpu") if with_barrier else x
    return jnp.sum(x * x)


def test_fusion_barrier_stops_recomputation_down_a_residual_stack():
    """XLA's CPU backend fuses each block's add + ReLU into the next block's, so a fusion deep in the stack recomputes
    every earlier block's output (it reads their biases); with the barrier each fusion reads at most two blocks'."""
    params = [{"down": random((64, 32), i) * 0.1, "up": random((32, 64), 20 + i) * 0.1, "bias": random((64,), 40 + i)}
              for i in range(8)]  # fmt: skip
    x = random((512, 64), 11)

    def widest_fusion(with_barrier: bool) -> int:
        step = jax.jit(jax.value_and_grad(residual_stack_loss), static_argnums=2)
        hlo = step.lower(params, x, with_barrier).compile().as_text()
        fusions = re.findall(r"= \S+ fusion\((.*)", hlo)
        return max(len(set(re.findall(r"params_(\d+)___bias", operands))) for operands in fusions)

    if widest_fusion(with_barrier=False) < 3:
        pytest.skip("this XLA no longer fuses across residual blocks; the barrier may be unneeded")
    assert widest_fusion(with_barrier=True) <= 2
    loss, grads = jax.jit(jax.value_and_grad(residual_stack_loss), static_argnums=2)(params, x, True)
    loss_ref, grads_ref = jax.jit(jax.value_and_grad(residual_stack_loss), static_argnums=2)(params, x, False)
    assert relative_error(loss, loss_ref) < 1e-6
    for leaf, leaf_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        assert relative_error(leaf, leaf_ref) < 1e-5


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_xla_convolutions_transpose_a_stored_input(strides):
    """The weight gradient of a convolution XLA runs itself starts with a transposed copy of the input; without
    `stored_input` XLA fused the input's producer (here BatchNorm's scale, shift and ReLU) into that copy and
    recomputed it there. Values and gradients stay those of lax."""
    x, w = random((2, 20, 20, 8), 1), random((3, 3, 8, 16), 2)
    scale, shift = random((8,), 3), random((8,), 4)

    def gradient(conv):  # of the kernel, the scale and the shift
        def loss(w, scale, shift):
            return jnp.sum(conv(jnp.maximum(x * scale + shift, 0.0), w, strides, "SAME", dimension_numbers=NHWC) ** 2)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    def transposes_recomputing_relu(conv) -> list[str]:
        hlo = gradient(conv).lower(w, scale, shift).compile().as_text()
        bodies = {m.group(1): m.group(2) for m in re.finditer(r"\n%(\S+) \(.*?\{\n(.*?)\n\}", hlo, re.S)}
        fusions = re.findall(r"%(\S*transpose\S*) = .*? fusion\(.*?calls=%([\w.\-]+)", hlo)
        return [name for name, body in fusions if "maximum(" in bodies.get(body, "")]

    if not transposes_recomputing_relu(lax.conv_general_dilated):
        pytest.skip("this XLA no longer fuses the producer into the weight gradient's transpose")
    assert transposes_recomputing_relu(cpu_conv) == []
    grads = gradient(cpu_conv)(w, scale, shift)
    grads_ref = gradient(lax.conv_general_dilated)(w, scale, shift)
    for leaf, leaf_ref in zip(grads, grads_ref, strict=True):
        assert relative_error(leaf, leaf_ref) < 1e-5


def _flax_and_fused_batchnorm(activate: bool, use_scale: bool, axis_name: str | None = None, impl: str = "cpu"):
    kwargs = dict(momentum=0.9, epsilon=1e-3, use_scale=use_scale, axis_name=axis_name, name="bn")

    class Flax(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            y = nn.BatchNorm(use_running_average=not train, **kwargs)(x)
            return nn.relu(y) if activate else y

    class Fused(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return layers.BatchNorm(activate=activate, ops=impl, **kwargs)(x, use_running_average=not train)

    return Flax(), Fused()


def _bn_loss(model, variables, params, x, r):
    """A loss that reads the output and both moving statistics, so that every cotangent path is exercised."""
    y, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, True,
                             mutable=["batch_stats"])  # fmt: skip
    stats = updates["batch_stats"]["bn"]
    return jnp.sum(y * r) + 3.0 * jnp.sum(stats["var"]) - jnp.sum(stats["mean"]), updates


@pytest.mark.parametrize("impl", ["reference", "cpu"])
@pytest.mark.parametrize("activate", [True, False])
@pytest.mark.parametrize("use_scale", [True, False])
def test_batchnorm_matches_flax(activate, use_scale, impl):
    reference, fused = _flax_and_fused_batchnorm(activate, use_scale, impl=impl)
    x = 0.5 + 2.0 * random((4, 5, 6, 7), 0)
    r = random(x.shape, 1)
    variables = reference.init(jax.random.key(0), x, True)
    assert jax.tree.structure(fused.init(jax.random.key(0), x, True)) == jax.tree.structure(variables)
    # Non-trivial parameters, so that the ReLU cuts a different set of units in every channel.
    params = jax.tree.map(lambda p: p + 0.3 * random(p.shape, 2), variables["params"])
    outputs = []
    for model in (reference, fused):
        (loss, updates), grads = jax.value_and_grad(
            lambda p, x, m=model: _bn_loss(m, variables, p, x, r), argnums=(0, 1), has_aux=True
        )(params, x)
        evaluated = model.apply({"params": params, "batch_stats": updates["batch_stats"]}, x, False)
        outputs.append((loss, updates, grads, evaluated))
    for a, b in zip(jax.tree.leaves(outputs[0]), jax.tree.leaves(outputs[1]), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(outputs[1][2][1]))) > 0.1  # the input gradient is not trivially zero


@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_batchnorm_matches_flax_across_devices(impl):
    """With `axis_name`, statistics and the input gradient span the devices, parameter gradients stay local."""
    reference, fused = _flax_and_fused_batchnorm(True, True, axis_name="devices", impl=impl)
    x = random((3, 2, 4, 4, 5), 3)  # 3 devices of 2 images
    r = random(x.shape[1:], 4)
    variables = reference.init(jax.random.key(0), x[0], True)
    params = jax.tree.map(lambda p: p + 0.3 * random(p.shape, 5), variables["params"])
    results = [
        jax.vmap(
            jax.value_and_grad(lambda p, x, m=model: _bn_loss(m, variables, p, x, r), argnums=(0, 1), has_aux=True),
            in_axes=(None, 0), axis_name="devices",
        )(params, x)
        for model in (reference, fused)
    ]  # fmt: skip
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_cpu_batchnorm_keeps_bfloat16():
    _, fused = _flax_and_fused_batchnorm(True, False)
    x = random((2, 3, 3, 4), 6).astype(jnp.bfloat16)
    variables = fused.init(jax.random.key(0), x, True)
    y, updates = fused.apply(variables, x, True, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16 and updates["batch_stats"]["bn"]["mean"].dtype == jnp.float32
    grad = jax.grad(lambda x: jnp.sum(fused.apply(variables, x, True, mutable=["batch_stats"])[0]))(x)
    assert grad.dtype == jnp.bfloat16
