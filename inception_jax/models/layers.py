"""The units all four networks are built from: the conv-BN-ReLU unit, TensorFlow's pools, the residual Inception
block pattern and the auxiliary head. Which implementation of the primitive operations runs (`ops`) is one setting
of `LayerConfig`; the blocks never see it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax import ops

# TF-slim's inception_arg_scope: variance_scaling_initializer() = truncated normal, fan-in, factor 2.
kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")

Padding = str | Sequence[tuple[int, int]]
VALID = "VALID"  # the convs and pools the paper's figures mark "V" (no padding); the rest are SAME
Kernel = int | tuple[int, int]


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """Settings every unit of a network shares. The networks have a field of the same name for each (their
    defaults are these), and `from_network` copies them."""

    depth_multiplier: float = 1.0
    min_depth: int = 16
    bn_momentum: float = 0.9997
    bn_epsilon: float = 1e-3
    bn_scale: bool = False  # TF-slim has no BN gamma (ReLU follows); timm/PyTorch have one
    bn_axis_name: str | None = None
    avg_pool_include_padding: bool = False  # True only to match torchvision/timm's Inception-v3
    bn_folded: bool = False  # BatchNorm folded into conv kernels and biases, for inference: models.fold_batchnorm
    ops: str = "auto"  # ops.IMPLEMENTATIONS: the reference, the CPU kernels, or per platform
    dtype: Any = jnp.float32

    @classmethod
    def from_network(cls, network: Any) -> LayerConfig:
        """The settings of `network`, which has a field for each of ours."""
        return cls(**{f.name: getattr(network, f.name) for f in dataclasses.fields(cls)})

    def depth(self, filters: int) -> int:
        """Filter count after the depth multiplier (TF-slim semantics: never below `min_depth`)."""
        if self.depth_multiplier == 1.0:
            return filters
        return max(self.min_depth, int(filters * self.depth_multiplier))

    def conv(self, features: int, kernel_size: Kernel, **kwargs: Any) -> nn.Conv:
        """An `nn.Conv` over NHWC with TF-slim's initialiser, computing in `dtype` with the selected ops."""
        kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        return nn.Conv(features, kernel_size, kernel_init=kernel_init, dtype=self.dtype,
                       conv_general_dilated=functools.partial(ops.conv.conv_general_dilated, impl=self.ops),
                       **kwargs)  # fmt: skip


class BatchNorm(nn.Module):
    """`flax.linen.BatchNorm(axis=-1)` with an optional ReLU after it, computed by `ops.batchnorm`: the same
    variables (params `scale`, `bias`; batch_stats `mean`, `var`) and updates (ra = momentum * ra + (1 - momentum) *
    batch statistic), so checkpoints and imported weights are interchangeable with flax's."""

    momentum: float = 0.99
    epsilon: float = 1e-5
    use_scale: bool = True
    activate: bool = False
    axis_name: str | None = None
    ops: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (features,)) if self.use_scale else jnp.ones(features)
        bias = self.param("bias", nn.initializers.zeros, (features,))
        dtype = self.dtype or x.dtype
        if use_running_average:
            y = ops.batchnorm.normalise(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, self.activate)
            return y.astype(dtype)
        # Flax does not average over devices while initialising (the axis may not exist yet).
        axis_name = None if self.is_initializing() else self.axis_name
        y, mean, var = ops.batchnorm.batch_norm(x.astype(dtype), scale, bias, self.epsilon, self.activate,
                                                axis_name, impl=self.ops)  # fmt: skip
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU: the unit every ordinary conv of the paper stands for.

    Variables `conv/kernel` and `bn/...`; with `bn_folded`, `conv/kernel` and `conv/bias` only.
    """

    features: int
    kernel_size: Kernel
    cfg: LayerConfig
    strides: int = 1
    padding: Padding = "SAME"
    activate: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        if cfg.bn_folded and train:
            raise ValueError("a network with BatchNorm folded into its convs (bn_folded=True) is for inference only")
        conv = cfg.conv(cfg.depth(self.features), self.kernel_size, strides=self.strides, padding=self.padding,
                        use_bias=cfg.bn_folded, name="conv")  # fmt: skip
        y = conv(x)
        if cfg.bn_folded:
            return nn.relu(y) if self.activate else y
        bn = BatchNorm(momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon, use_scale=cfg.bn_scale,
                       activate=self.activate, axis_name=cfg.bn_axis_name, ops=cfg.ops, dtype=cfg.dtype, name="bn")
        return bn(y, use_running_average=not train)


def expanded_filter_bank(x: jax.Array, train: bool, cfg: LayerConfig, prefix: str, filters: int) -> jax.Array:
    """The expanded filter bank of the 8x8 blocks (v3 paper Fig. 7): parallel 1x3 and 3x1 convs, concatenated;
    units `{prefix}a` and `{prefix}b`."""
    a = ConvBN(filters, (1, 3), cfg, name=f"{prefix}a")(x, train)
    b = ConvBN(filters, (3, 1), cfg, name=f"{prefix}b")(x, train)
    return jnp.concatenate([a, b], axis=-1)


def max_pool_3x3_s2(x: jax.Array, cfg: LayerConfig) -> jax.Array:
    """The 3x3 stride-2 VALID max pool of every grid reduction."""
    return ops.pooling.max_pool(x, 3, 2, impl=cfg.ops)


def avg_pool_3x3(x: jax.Array, cfg: LayerConfig) -> jax.Array:
    """The 3x3 stride-1 SAME average pool of the pool branches; like TensorFlow it excludes padded zeros from the
    mean unless `cfg.avg_pool_include_padding`."""
    return ops.pooling.avg_pool(x, 3, cfg.avg_pool_include_padding, impl=cfg.ops)


Widths = tuple[tuple[int, ...], ...]


class InceptionResNetBlock(nn.Module):
    """The residual Inception pattern (paper Fig. 10-13, 16-19, 20):
    out = ReLU(x + scale * Conv1x1_linear(concat(branches(x)))).

    `widths[i]` are branch i's filter counts. The 1x1 "filter expansion" conv has a bias and neither BN nor
    activation, and matches the input depth. Subclasses define `branches`.
    """

    cfg: LayerConfig
    widths: Widths
    scale: float
    activate: bool = True

    def branches(self, x: jax.Array, train: bool) -> list[jax.Array]:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        mixed = jnp.concatenate(self.branches(x, train), axis=-1)
        up = self.cfg.conv(x.shape[-1], 1, use_bias=True, name="expand")(mixed)
        x = x + self.scale * up
        return ops.barrier.residual(nn.relu(x) if self.activate else x, impl=self.cfg.ops)


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
        x = ConvBN(128, 1, self.cfg, name="conv0")(x, train)
        padding = "VALID" if min(x.shape[1], x.shape[2]) >= 5 else "SAME"
        x = ConvBN(768, 5, self.cfg, padding=padding, name="conv1")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.cfg.dtype, name="fc")(x)
