"""The ops switch as GPUs and TPUs see it: a train step lowered for them in `reference` mode holds exactly the
convolutions of plain autodiff and none of the CPU rewrites, and `auto` lowers to the same program there while it
takes the CPU kernels when lowered for the CPU. Nothing is compiled: these are StableHLO texts."""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import pytest

from inception_jax import models
from inception_jax.training import config as config_lib
from inception_jax.training import optim, state, steps

# Every network, each block kind present once (twice for the released IR-v2's C stack and its final linear block).
NETWORKS = {
    "v3": ("inception_v3", {}),
    "v4": ("inception_v4", {"num_blocks": (1, 1, 1)}),
    "irv1": ("inception_resnet_v1", {"num_blocks": (1, 1, 1)}),
    "irv2": ("inception_resnet_v2", {"num_blocks": (1, 1, 2)}),
    "irv2-paper": ("inception_resnet_v2", {"variant": "paper", "num_blocks": (1, 1, 1)}),
}
# Ops a platform_dependent switch leaves around the branch it keeps: the branch index and its selection, and zeros
# standing in for the other branch's residuals (unused, removed by XLA).
SWITCH_OPS = {"stablehlo.case", "stablehlo.return", "stablehlo.constant", "stablehlo.broadcast_in_dim"}
# The three convolutions of plain autodiff, told apart by their dimension numbers: the forward pass, the weight
# gradient (batch contracted) and the input gradient (the kernel's in/out swapped).
CONV_KINDS = {
    "forward": "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]",
    "weight gradient": "[f, 0, 1, b]x[i, 0, 1, o]->[0, 1, b, f]",
    "input gradient": "[b, 0, 1, f]x[0, 1, o, i]->[b, 0, 1, f]",
}


def ops_histogram(text: str) -> collections.Counter:
    return collections.Counter(re.findall(r"= (?:\"?)(stablehlo\.[a-z_]+)", text))


@functools.cache
def traced(key: str, ops: str) -> tuple:
    """(the jitted train step traced once, the abstract train state)."""
    name, overrides = NETWORKS[key]
    model = models.create(name, depth_multiplier=0.1, min_depth=8, num_classes=10, aux_logits=True, ops=ops,
                          **overrides)  # fmt: skip
    recipe = config_lib.default_config()
    schedule = optim.learning_rate_schedule(recipe, steps_per_epoch=100)
    tx = optim.make_optimizer(recipe, schedule)
    train_state = jax.eval_shape(lambda r: state.create_train_state(model, tx, r, 75), jax.random.key(0))
    batch = {"image": jax.ShapeDtypeStruct((4, 75, 75, 3), jnp.float32), "label": jax.ShapeDtypeStruct((4,), jnp.int32)}
    return jax.jit(steps.make_train_step(model, schedule)).trace(train_state, batch), train_state


@functools.cache
def lowered(key: str, ops: str, platform: str) -> str:
    return traced(key, ops)[0].lower(lowering_platforms=(platform,)).as_text()


def barriers(text: str) -> int:
    """The CPU kernels' fusion barriers: sign bits of 4-D activations (the RNG's shifts are on keys and 2-D masks)."""
    return len(re.findall(r"stablehlo\.shift_right_logical [^\n]*: tensor<\d+x\d+x\d+x\d+x", text))


@pytest.fixture(scope="module", params=list(NETWORKS))
def network(request):
    return request.param


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_reference_train_step_has_the_convolutions_of_plain_autodiff(network, platform):
    text = lowered(network, "reference", platform)
    n = sum(1 for kernel in jax.tree.leaves(traced(network, "reference")[1].params) if kernel.ndim == 4)  # every conv
    kinds = collections.Counter(re.findall(r"dim_numbers = (\[.*?\]x\[.*?\]->\[.*?\])", text))
    # Forward N; backward 2N - 1: each layer's weight gradient, every input gradient but the first layer's (the
    # images'). Nothing else: no per-phase input gradients, no trimmed or Winograd convolutions.
    assert kinds == {CONV_KINDS["forward"]: n, CONV_KINDS["weight gradient"]: n, CONV_KINDS["input gradient"]: n - 1}
    assert text.count("stablehlo.convolution") == 3 * n - 1
    histogram = ops_histogram(text)
    # No CPU rewrites: the only matmuls are the two classifiers' (forward, input and weight gradients), no switch
    # and no division by an opaque one (`barrier.materialise`'s bit tricks).
    assert histogram["stablehlo.dot_general"] == 6
    assert histogram["stablehlo.case"] == 0 and barriers(text) == 0
    assert histogram["stablehlo.select_and_scatter"] > 0  # XLA's own max-pool gradient


def test_auto_lowers_the_reference_for_gpus_and_the_cpu_kernels_for_the_cpu(network):
    reference = ops_histogram(lowered(network, "reference", "cuda"))
    auto = ops_histogram(lowered(network, "auto", "cuda"))
    for op in SWITCH_OPS:
        auto.pop(op, None), reference.pop(op, None)
    assert auto == reference
    cpu = lowered(network, "auto", "cpu")
    assert cpu.count("stablehlo.convolution") < reference["stablehlo.convolution"]  # 1x1s became matmuls
    assert barriers(cpu) > 0  # the stored inputs' (and the residual stream's) barriers
