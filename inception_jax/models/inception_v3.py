"""Inception-v3 as released (TF-slim graph; Szegedy et al. 2015, arXiv 1512.00567).

The released graph, not the v3 paper's Table 1, is the reference: it is what every pretrained checkpoint holds.
Block names follow the released graph (Mixed_5b ... Mixed_7c); conv units inside a block are `branch{i}_{j}`, the
j-th unit of branch i.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax.models.inception_v4 import ReductionB
from inception_jax.models.layers import VALID, ConvBN, LayerConfig, avg_pool_3x3, expanded_filter_bank, max_pool_3x3_s2
from inception_jax.models.network import InceptionNet


class InceptionV3Stem(nn.Module):
    """The v3 stem (v3 paper Table 1, released graph): 299x299x3 -> 35x35x192.

    Inception-ResNet-v1 (paper Fig. 14) ends it with a 3x3/2 VALID conv of `reduce_filters` filters instead of
    the final max pool.
    """

    cfg: LayerConfig
    reduce_filters: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        x = ConvBN(32, 3, cfg, strides=2, padding=VALID, name="Conv2d_1a_3x3")(x, train)
        x = ConvBN(32, 3, cfg, padding=VALID, name="Conv2d_2a_3x3")(x, train)
        x = ConvBN(64, 3, cfg, name="Conv2d_2b_3x3")(x, train)
        x = max_pool_3x3_s2(x, cfg)
        x = ConvBN(80, 1, cfg, padding=VALID, name="Conv2d_3b_1x1")(x, train)
        x = ConvBN(192, 3, cfg, padding=VALID, name="Conv2d_4a_3x3")(x, train)
        if self.reduce_filters is None:
            return max_pool_3x3_s2(x, cfg)
        return ConvBN(self.reduce_filters, 3, cfg, strides=2, padding=VALID, name="Conv2d_4b_3x3")(x, train)


class InceptionV3A(nn.Module):
    """35x35 block (v3 paper Fig. 5, released widths): [1x1] [1x1 48 -> 5x5 64] [1x1 64 -> 3x3 96 -> 3x3 96]
    [avg pool -> 1x1]. Inception-ResNet-v2's released Mixed_5b is this block with widths 96 and 64."""

    cfg: LayerConfig
    branch0_filters: int = 64
    pool_filters: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        b0 = ConvBN(self.branch0_filters, 1, cfg, name="branch0_0")(x, train)
        b1 = ConvBN(48, 1, cfg, name="branch1_0")(x, train)
        b1 = ConvBN(64, 5, cfg, name="branch1_1")(b1, train)
        b2 = ConvBN(64, 1, cfg, name="branch2_0")(x, train)
        b2 = ConvBN(96, 3, cfg, name="branch2_1")(b2, train)
        b2 = ConvBN(96, 3, cfg, name="branch2_2")(b2, train)
        b3 = ConvBN(self.pool_filters, 1, cfg, name="branch3_0")(avg_pool_3x3(x, cfg), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionV3ReductionA(nn.Module):
    """35x35 -> 17x17 grid reduction (v3 paper Fig. 10, released Mixed_6a): [3x3/2 384] [1x1 64 -> 3x3 96 ->
    3x3/2 96] [max pool 3x3/2]."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        b0 = ConvBN(384, 3, cfg, strides=2, padding=VALID, name="branch0_0")(x, train)
        b1 = ConvBN(64, 1, cfg, name="branch1_0")(x, train)
        b1 = ConvBN(96, 3, cfg, name="branch1_1")(b1, train)
        b1 = ConvBN(96, 3, cfg, strides=2, padding=VALID, name="branch1_2")(b1, train)
        return jnp.concatenate([b0, b1, max_pool_3x3_s2(x, cfg)], axis=-1)


class InceptionV3B(nn.Module):
    """17x17 block with factorised 7x7 convs (v3 paper Fig. 6, n = 7); `channels` is the bottleneck width c:
    [1x1 192] [1x1 c -> 1x7 c -> 7x1 192] [1x1 c -> 7x1 c -> 1x7 c -> 7x1 c -> 1x7 192] [avg pool -> 1x1 192]."""

    cfg: LayerConfig
    channels: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg, c = self.cfg, self.channels
        b0 = ConvBN(192, 1, cfg, name="branch0_0")(x, train)
        b1 = ConvBN(c, 1, cfg, name="branch1_0")(x, train)
        b1 = ConvBN(c, (1, 7), cfg, name="branch1_1")(b1, train)
        b1 = ConvBN(192, (7, 1), cfg, name="branch1_2")(b1, train)
        b2 = ConvBN(c, 1, cfg, name="branch2_0")(x, train)
        b2 = ConvBN(c, (7, 1), cfg, name="branch2_1")(b2, train)
        b2 = ConvBN(c, (1, 7), cfg, name="branch2_2")(b2, train)
        b2 = ConvBN(c, (7, 1), cfg, name="branch2_3")(b2, train)
        b2 = ConvBN(192, (1, 7), cfg, name="branch2_4")(b2, train)
        b3 = ConvBN(192, 1, cfg, name="branch3_0")(avg_pool_3x3(x, cfg), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionV3C(nn.Module):
    """8x8 block with expanded filter banks (v3 paper Fig. 7, released Mixed_7b/7c): [1x1 320]
    [1x1 384 -> (1x3 384, 3x1 384)] [1x1 448 -> 3x3 384 -> (1x3 384, 3x1 384)] [avg pool -> 1x1 192]."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        b0 = ConvBN(320, 1, cfg, name="branch0_0")(x, train)
        b1 = ConvBN(384, 1, cfg, name="branch1_0")(x, train)
        b1 = expanded_filter_bank(b1, train, cfg, "branch1_1", 384)
        b2 = ConvBN(448, 1, cfg, name="branch2_0")(x, train)
        b2 = ConvBN(384, 3, cfg, name="branch2_1")(b2, train)
        b2 = expanded_filter_bank(b2, train, cfg, "branch2_2", 384)
        b3 = ConvBN(192, 1, cfg, name="branch3_0")(avg_pool_3x3(x, cfg), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionV3(InceptionNet):
    """Inception-v3, released graph: stem, 3x A (35x35), reduction, 4x B (17x17), reduction, 2x C (8x8) -> 2048.

    The auxiliary head sits on Mixed_6e.
    """

    def backbone(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.layer_config
        x = InceptionV3Stem(cfg, name="Stem")(x, train)
        for name, pool_filters in zip(("Mixed_5b", "Mixed_5c", "Mixed_5d"), (32, 64, 64), strict=True):
            x = InceptionV3A(cfg, pool_filters=pool_filters, name=name)(x, train)
        x = InceptionV3ReductionA(cfg, name="Mixed_6a")(x, train)
        for name, channels in zip(("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"), (128, 160, 160, 192), strict=True):
            x = InceptionV3B(cfg, channels=channels, name=name)(x, train)
        self.aux(x, train)
        x = ReductionB(cfg, ((192, 320), (192, 192, 192, 192)), name="Mixed_7a")(x, train)  # Inception-v4's, narrower
        for name in ("Mixed_7b", "Mixed_7c"):
            x = InceptionV3C(cfg, name=name)(x, train)
        return x
