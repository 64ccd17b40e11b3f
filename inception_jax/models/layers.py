"""Building blocks shared by all four networks: the conv-BN-ReLU unit, TensorFlow-style pools and the residual
Inception block pattern."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inception_jax.models import pooling
from inception_jax.models.batchnorm import BatchNorm
from inception_jax.models.convolution import conv_general_dilated, pointwise
from inception_jax.models.fusion_barrier import fusion_barrier

# TF-slim's inception_arg_scope: variance_scaling_initializer() = truncated normal, fan-in, factor 2.
kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")

Padding = str | Sequence[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """Settings every conv unit of a network shares (a network builds one and hands it to its blocks)."""

    depth_multiplier: float = 1.0
    min_depth: int = 16
    bn_momentum: float = 0.9997
    bn_epsilon: float = 1e-3
    bn_scale: bool = False
    bn_axis_name: str | None = None
    avg_pool_include_padding: bool = False
    bn_folded: bool = False
    dtype: Any = jnp.float32

    def depth(self, filters: int) -> int:
        """Filter count after the depth multiplier (TF-slim semantics: never below `min_depth`)."""
        if self.depth_multiplier == 1.0:
            return filters
        return max(self.min_depth, int(filters * self.depth_multiplier))


class ConvKernel(nn.Module):
    """A convolution's variables under flax `nn.Conv`'s names, initialisers and order (`kernel`, then `bias` when
    `use_bias`), declared without applying it, so that several convolutions' kernels can be applied as one."""

    features: int
    kernel_size: tuple[int, int]
    use_bias: bool = False

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array | None]:
        kernel = self.param("kernel", kernel_init, (*self.kernel_size, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
        return kernel, bias


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU: the unit every ordinary conv of the paper stands for.

    Variables: `conv/kernel` and BatchNorm's `bn/...` (with `bn_folded`, `conv/kernel` and `conv/bias` only).
    `kernel` and `normalise` are its two halves, for `conv_branches`, which applies several units' kernels at once.
    """

    features: int
    kernel_size: tuple[int, int]
    cfg: LayerConfig
    strides: int = 1
    padding: Padding = "SAME"
    activate: bool = True

    def setup(self) -> None:
        cfg = self.cfg
        self.conv = ConvKernel(cfg.depth(self.features), self.kernel_size, use_bias=cfg.bn_folded)
        if not cfg.bn_folded:
            self.bn = BatchNorm(momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon, use_scale=cfg.bn_scale,
                                axis_name=cfg.bn_axis_name, activate=self.activate, dtype=cfg.dtype)  # fmt: skip

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kernel, bias = self.kernel(x.shape[-1])
        dtype = self.cfg.dtype
        y = conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (self.strides, self.strides), self.padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return self.normalise(y, bias, train)

    def kernel(self, in_features: int) -> tuple[jax.Array, jax.Array | None]:
        """(kernel, bias or None) for an input of `in_features` channels."""
        return self.conv(in_features)

    def normalise(self, y: jax.Array, bias: jax.Array | None, train: bool) -> jax.Array:
        """The unit applied to its convolution's output `y` (the folded `bias` added where there is one)."""
        if self.cfg.bn_folded and train:
            raise ValueError("a network with BatchNorm folded into its convs (bn_folded=True) is for inference only")
        if self.cfg.bn_folded:
            y = y + bias.astype(y.dtype)
            return nn.relu(y) if self.activate else y
        return self.bn(y, use_running_average=not train)


def conv_sequence(
    x: jax.Array, train: bool, cfg: LayerConfig, prefix: str, layers: Sequence[tuple], start: int = 0
) -> jax.Array:
    """Applies one branch: conv units named `{prefix}_{start}`, `{prefix}_{start + 1}`, ...

    Each layer is `(filters, kernel)` (stride 1, SAME) or `(filters, kernel, strides, padding)`; an int kernel is
    square.
    """
    for i, layer in enumerate(layers, start=start):
        filters, kernel = layer[:2]
        strides, padding = layer[2:] if len(layer) > 2 else (1, "SAME")
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        x = ConvBN(filters, kernel, cfg, strides=strides, padding=padding, name=f"{prefix}_{i}")(x, train)
    return x


def _pointwise(layer: tuple) -> bool:
    return layer[1] in (1, (1, 1)) and (len(layer) == 2 or layer[2] == 1)


def conv_branches(
    x: jax.Array, train: bool, cfg: LayerConfig, branches: Sequence[tuple[str, Sequence[tuple]]]
) -> list[jax.Array]:
    """`conv_sequence(x, train, cfg, prefix, layers)` for each `(prefix, layers)` of several branches reading the same
    `x`, with the branches' leading 1x1 units (same variables) computed as one matmul.

    Why: each 1x1 conv reads all of `x` (35x35x320 at batch 8: 12.5 MB) and, in the backward pass, makes an
    input-sized gradient that the next one's is added to; as one matmul with the kernels side by side, `x` is read
    once and the input gradient is one matmul. Fewer, wider matmuls: 19.6 -> 13.5 ms for an Inception-ResNet-A block's
    three 1x1 units with BatchNorm, forward and both gradients (b8).
    """
    heads = [(prefix, layers[0]) for prefix, layers in branches if _pointwise(layers[0])]
    if len(heads) < 2:
        return [conv_sequence(x, train, cfg, prefix, layers) for prefix, layers in branches]
    units = [ConvBN(layer[0], (1, 1), cfg, name=f"{prefix}_0") for prefix, layer in heads]
    kernels, biases = zip(*(unit.kernel(x.shape[-1]) for unit in units), strict=True)
    dtype = cfg.dtype
    y = pointwise(x.astype(dtype), jnp.concatenate([k[0, 0] for k in kernels], axis=-1).astype(dtype))
    bounds = np.cumsum([k.shape[-1] for k in kernels])[:-1].tolist()
    firsts = {
        prefix: unit.normalise(part, bias, train)
        for (prefix, _), unit, part, bias in zip(heads, units, jnp.split(y, bounds, axis=-1), biases, strict=True)
    }
    return [
        conv_sequence(firsts[prefix], train, cfg, prefix, layers[1:], start=1)
        if prefix in firsts
        else conv_sequence(x, train, cfg, prefix, layers)
        for prefix, layers in branches
    ]


def split_1x3_3x1(x: jax.Array, train: bool, cfg: LayerConfig, prefix: str, filters: int) -> jax.Array:
    """The expanded filter bank of the 8x8 blocks (v3 paper Fig. 7): parallel 1x3 and 3x1 convs, concatenated."""
    a = ConvBN(filters, (1, 3), cfg, name=f"{prefix}a")(x, train)
    b = ConvBN(filters, (3, 1), cfg, name=f"{prefix}b")(x, train)
    return jnp.concatenate([a, b], axis=-1)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """The 3x3 stride-2 VALID max pool of every grid reduction."""
    return pooling.max_pool_valid(x, 3, 2)


def avg_pool_3x3(x: jax.Array, include_padding: bool = False) -> jax.Array:
    """3x3 stride-1 SAME average pool; like TensorFlow it excludes padded zeros from the mean unless asked."""
    return pooling.avg_pool_same(x, 3, include_padding)


class InceptionResNetBlock(nn.Module):
    """The residual Inception pattern (paper Fig. 10-13, 16-19, 20):
    out = ReLU(x + scale * Conv1x1_linear(concat(branches(x)))).

    The 1x1 "filter expansion" conv has a bias and neither BN nor activation, and matches the input depth.
    Subclasses define `branches`.
    """

    cfg: LayerConfig
    scale: float
    activate: bool = True

    def branches(self, x: jax.Array, train: bool) -> list[jax.Array]:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        mixed = jnp.concatenate(self.branches(x, train), axis=-1)
        residual = nn.Conv(
            x.shape[-1],
            (1, 1),
            use_bias=True,
            kernel_init=kernel_init,
            dtype=self.cfg.dtype,
            name="expand",
            conv_general_dilated=conv_general_dilated,
        )(mixed)
        x = x + self.scale * residual
        # Without the barrier XLA's CPU backend recomputes every earlier block's output inside each later consumer.
        return fusion_barrier(nn.relu(x) if self.activate else x)


class AuxHead(nn.Module):
    """Auxiliary classifier (v3 paper §4, TF-slim's AuxLogits): 5x5/3 avg pool -> 1x1 128 -> 5x5 768 -> dense.

    At 299 input the 17x17 map pools to 5x5 and the 5x5 VALID conv reduces it to 1x1. Smaller inputs shrink the
    pool window and pad the 5x5 conv instead, so the parameter shapes never depend on the input size.
    """

    num_classes: int
    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        window = min(5, x.shape[1], x.shape[2])
        x = nn.avg_pool(x, (window, window), strides=(3, 3), padding="VALID")
        x = ConvBN(128, (1, 1), self.cfg, name="conv0")(x, train)
        padding = "VALID" if min(x.shape[1], x.shape[2]) >= 5 else "SAME"
        x = ConvBN(768, (5, 5), self.cfg, padding=padding, name="conv1")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.cfg.dtype, name="fc")(x)
