"""The four networks: shapes, exact parameter counts, knobs and input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tree_relative_error

from inception_jax import models

# (name, overrides, final feature depth)
NETWORKS = [
    ("inception_v3", {}, 2048),
    ("inception_v4", {}, 1536),
    ("inception_resnet_v1", {}, 1792),
    ("inception_resnet_v2", {}, 1536),
    ("inception_resnet_v2", {"variant": "paper"}, 2144),
]
IDS = ["v3", "v4", "irv1", "irv2", "irv2-paper"]

# Published counts (1000 classes): timm's models (PyTorch-style, BN gamma counted) and TF-slim/Keras's (no gamma).
PUBLISHED = {
    ("inception_v3", "released"): {"torch": 23_834_568, "slim": 23_817_352, "torch_aux": 27_161_264},
    ("inception_v4", "released"): {"torch": 42_679_816, "slim": 42_648_232, "torch_aux": 46_039_280},
    ("inception_resnet_v2", "released"): {"torch": 55_843_464, "slim": 55_813_192, "torch_aux": 59_211_120},
    ("inception_resnet_v2", "paper"): {"torch": 32_433_928},
    ("inception_resnet_v1", "released"): {"torch": 22_756_328, "slim": 22_742_808},
}


def shapes(model, size, train=False, batch=2):
    """Output and variable shapes without compiling (exact shape inference)."""

    def run():
        x = jnp.zeros((batch, size, size, 3))
        variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)
        out, state = model.apply(
            variables, x, train=train, mutable=["intermediates", "batch_stats"], rngs={"dropout": jax.random.key(2)}
        )
        return variables, out, state["intermediates"]

    return jax.eval_shape(run)


@pytest.mark.parametrize("size,grid", [(75, 1), (299, 8)])
@pytest.mark.parametrize("name,overrides,depth", NETWORKS, ids=IDS)
def test_output_and_feature_shapes(name, overrides, depth, size, grid):
    model = models.create(name, num_classes=17, **overrides)
    _, logits, inter = shapes(model, size)
    assert logits.shape == (2, 17) and logits.dtype == jnp.float32
    assert inter["features"][0].shape == (2, grid, grid, depth)


@pytest.mark.parametrize("key,counts", list(PUBLISHED.items()), ids=lambda v: str(v))
def test_parameter_counts_match_published(key, counts):
    name, variant = key
    extra = {"variant": variant} if name == "inception_resnet_v2" else {}
    for kind, expected in counts.items():
        model = models.create(name, bn_scale=kind != "slim", aux_logits=kind.endswith("aux"), **extra)
        x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
        params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)["params"]
        assert models.count_params(params) == expected, kind


def test_aux_head_is_sown_in_training_only():
    model = models.create("inception_v4", aux_logits=True, num_classes=5, num_blocks=(1, 1, 1))
    _, _, inter_train = shapes(model, 299, train=True)
    _, _, inter_eval = shapes(model, 299, train=False)
    assert inter_train["aux_logits"][0].shape == (2, 5)
    assert "aux_logits" not in inter_eval


def small(name, **overrides):
    return models.create(name, depth_multiplier=0.1, min_depth=8, num_classes=10, **overrides)


@pytest.fixture(scope="module")
def small_irv2():
    model = small("inception_resnet_v2", num_blocks=(1, 1, 1))
    x = jax.random.uniform(jax.random.key(0), (4, 75, 75, 3), minval=-1, maxval=1)
    return model, models.init(model, 75), x


def test_depth_multiplier_shrinks_every_layer(small_irv2):
    model, variables, _ = small_irv2
    params = variables["params"]
    assert params["Stem"]["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 8)  # 32 * 0.1 -> min_depth 8
    assert params["Conv2d_7b_1x1"]["conv"]["kernel"].shape[-1] == 153  # int(1536 * 0.1)
    assert models.count_params(params) < 600_000


def test_residual_scale_changes_output(small_irv2):
    model, variables, x = small_irv2
    other = model.clone(residual_scales=(0.5, 0.5, 0.5))
    a = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    b = jax.jit(lambda v, x: other.apply(v, x, train=False))(variables, x)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


def test_train_mode_updates_batch_stats_and_dropout_and_eval_does_not(small_irv2):
    model, variables, x = small_irv2
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}))
    _, state = train(variables, x, jax.random.key(0))
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(state["batch_stats"])
    changed = sum(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    assert changed == len(before)
    # Eval is deterministic and uses the stored statistics.
    evaluate = jax.jit(lambda v, x: model.apply(v, x))
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))
    # Dropout is active in training only: another key, other logits.
    other_key = train(variables, x, jax.random.key(1))[0]
    assert np.abs(np.asarray(other_key - train(variables, x, jax.random.key(0))[0])).max() > 1e-6


def test_bfloat16_compute_keeps_float32_params():
    model = small("inception_v4", num_blocks=(1, 1, 1), dtype="bfloat16")
    variables = models.init(model, 75)
    assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
    x = jnp.zeros((2, 75, 75, 3))
    logits, inter = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, x)
    assert inter["intermediates"]["features"][0].dtype == jnp.bfloat16
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_avg_pool_excludes_padding_like_tensorflow(impl):
    from inception_jax.ops import pooling

    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    corner = (0 + 1 + 3 + 4) / 4  # TF averages the 4 real values of the corner window
    assert float(pooling.avg_pool(x, impl=impl)[0, 0, 0, 0]) == pytest.approx(corner)
    assert float(pooling.avg_pool(x, include_padding=True, impl=impl)[0, 0, 0, 0]) == pytest.approx(4 * corner / 9)


@pytest.mark.parametrize(
    "name,overrides,message",
    [
        ("inception_v5", {}, "unknown model"),
        ("inception_resnet_v2", {"residual_scales": (0.1, 0.0, 0.2)}, "residual_scales"),
        ("inception_resnet_v1", {"residual_scales": (0.1, -1, 0.2)}, "residual_scales"),
        ("inception_resnet_v2", {"variant": "odd"}, "variant"),
        ("inception_v4", {"num_classes": 0}, "num_classes"),
        ("inception_v4", {"depth_multiplier": 0}, "depth_multiplier"),
        ("inception_v4", {"dropout_rate": 1.0}, "dropout_rate"),
        ("inception_v4", {"dtype": "int8"}, "dtype"),
        ("inception_v4", {"num_blocks": (4, 7)}, "num_blocks"),
        ("inception_v3", {"residual_scales": (0.1, 0.1, 0.1)}, "no field"),
        ("inception_v4", {"ops": "gpu"}, "ops must be one of"),
    ],
)
def test_bad_settings_raise_clear_errors(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        models.create(name, **overrides)


@pytest.mark.parametrize(
    "shape,message", [((1, 74, 80, 3), "smaller than the minimum 75x75"), ((1, 75, 75, 1), "3 channels"),
                      ((75, 75, 3), "NHWC")]
)  # fmt: skip
def test_bad_inputs_raise_clear_errors(shape, message):
    model = models.create("inception_v3")
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def test_inference_macs_from_xla_cost_analysis():
    model = models.create("inception_v3")
    variables, _, _ = shapes(model, 299, batch=1)
    gmacs = models.inference_macs(model, variables) / 1e9
    # Published (fvcore-style) 5.71 GMACs also counts BN, ReLU and pools; XLA counts the convs and dense: 5.50.
    assert 5.4 < gmacs < 5.8


def test_dead_fraction():
    assert float(models.dead_fraction(jnp.zeros((2, 8, 8, 16)))) == 1.0
    known = jnp.array([[0.0, 1.0], [0.0, -0.0]]).reshape(1, 2, 2, 1)  # three zeros (-0.0 is zero) of four
    assert float(models.dead_fraction(known)) == 0.75
    assert float(models.dead_fraction(jnp.full((1, 3, 3, 2), 1e-30))) == 0.0


def test_dead_channel_fraction_counts_channels_zero_for_the_whole_batch():
    features = np.zeros((2, 3, 3, 4), np.float32)
    features[1, 2, 0, 1] = 0.5  # channel 1 fires once, in one example
    features[0, :, :, 3] = 1.0  # channel 3 fires everywhere in one example
    assert float(models.dead_channel_fraction(jnp.asarray(features))) == 0.5  # channels 0 and 2
    assert float(models.dead_channel_fraction(jnp.zeros((2, 8, 8, 16)))) == 1.0
    # Mostly zeros is not dead: every channel fires somewhere (dead_fraction would read 0.99).
    sparse = np.zeros((2, 10, 10, 3), np.float32)
    sparse[0, 0, 0, :] = 1.0
    assert float(models.dead_channel_fraction(jnp.asarray(sparse))) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v3", "inception_v4", "inception_resnet_v2"])
def test_folded_batchnorm_computes_the_same_inference(name):
    model = models.create(name, num_classes=7, depth_multiplier=0.25, bn_scale=True)
    variables = models.init(model, 75)
    # Non-trivial BN: random gammas, betas and moving statistics.
    rng = np.random.default_rng(0)
    perturb = lambda path, v: jnp.asarray(
        rng.uniform(0.5, 1.5, v.shape) if path[-1].key in ("scale", "var") else rng.normal(0, 0.3, v.shape), v.dtype
    )
    bn_only = lambda tree: jax.tree_util.tree_map_with_path(
        lambda p, v: perturb(p, v) if any(getattr(k, "key", None) == "bn" for k in p) else v, tree
    )
    variables = {"params": bn_only(variables["params"]), "batch_stats": bn_only(variables["batch_stats"])}
    folded_model, folded = models.fold_batchnorm(model, variables)
    assert "batch_stats" not in folded and folded_model.bn_folded
    assert models.count_params(folded["params"]) < models.count_params(variables["params"])
    x = jnp.asarray(rng.uniform(-1, 1, (2, 75, 75, 3)), jnp.float32)
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    out = jax.jit(lambda v, x: folded_model.apply(v, x, train=False))(folded, x)
    assert float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref))) < 1e-4
    with pytest.raises(ValueError, match="inference only"):
        folded_model.apply(folded, x, train=True)
    with pytest.raises(ValueError, match="already folded"):
        models.fold_batchnorm(folded_model, folded)


@pytest.mark.slow
def test_remat_keeps_parameters_and_gradients():
    model = models.create("inception_resnet_v2", num_classes=5, depth_multiplier=0.1, num_blocks=(1, 2, 1))
    remat = model.clone(remat=True)
    variables = models.init(model, 75)
    x = jax.random.uniform(jax.random.key(0), (2, 75, 75, 3), minval=-1, maxval=1)

    def grads(m):
        def loss(params):
            out, state = m.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                 mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})  # fmt: skip
            return jnp.sum(out**2), state

        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    initialised = jax.eval_shape(lambda: remat.init({"params": jax.random.key(0)}, x, train=True))
    assert jax.tree.structure(initialised["params"]) == jax.tree.structure(variables["params"])
    (g_plain, s_plain), (g_remat, s_remat) = grads(model), grads(remat)
    for a, b in zip(jax.tree.leaves((g_plain, s_plain)), jax.tree.leaves((g_remat, s_remat)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The recomputation is really there: the gradient's program runs the convolutions again.
    count = lambda m: str(jax.make_jaxpr(lambda p: grads(m))(variables["params"])).count("conv_general_dilated")
    assert count(remat) > count(model)


# Every network, each block kind present, at 107x107: its last maps are 2x2, so that training-mode BatchNorm there
# normalises over 32 values (at 75x75 the 1x1 maps' 8 values amplify float rounding past 1e-4 through the layers).
OPS_NETWORKS = {
    "v3": ("inception_v3", {}),
    "v4": ("inception_v4", {"num_blocks": (1, 1, 1)}),
    "irv1": ("inception_resnet_v1", {"num_blocks": (1, 1, 1)}),
    "irv2": ("inception_resnet_v2", {"num_blocks": (1, 1, 2)}),
    "irv2-paper": ("inception_resnet_v2", {"variant": "paper", "num_blocks": (1, 1, 1)}),
}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(OPS_NETWORKS))
def test_cpu_kernels_compute_the_reference_network(key):
    """`ops="cpu"` against `ops="reference"` on the same variables and batch: training-mode logits and BN
    statistics, and the gradient of every parameter, within 1e-4 of the reference's scale (the largest logit, the
    largest statistic, the largest gradient entry of the whole network)."""
    name, overrides = OPS_NETWORKS[key]
    build = lambda ops: models.create(name, depth_multiplier=0.1, min_depth=8, num_classes=10, aux_logits=True,
                                      ops=ops, **overrides)  # fmt: skip
    variables = models.init(build("reference"), 107)
    x = jax.random.uniform(jax.random.key(0), (8, 107, 107, 3), minval=-1, maxval=1)
    weights = jnp.cos(jnp.arange(10.0))

    def run(model):
        def loss(params):
            logits, state = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                        mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})  # fmt: skip
            return jnp.sum(logits * weights), (logits, state["batch_stats"])

        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    (grads, (logits, stats)), (grads_ref, (logits_ref, stats_ref)) = run(build("cpu")), run(build("reference"))
    errors = {"logits": tree_relative_error(logits, logits_ref), "gradients": tree_relative_error(grads, grads_ref),
              "BN statistics": tree_relative_error(stats, stats_ref)}  # fmt: skip
    print(f"{key}: cpu vs reference, max |difference| / max |reference|: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))  # fmt: skip
    assert max(errors.values()) < 1e-4, errors

