"""Inception-v4 (paper Fig. 3-9), with the released branch order the pretrained weights need.

Its stem and Reduction-A are shared with the Inception-ResNet networks (Reduction-A via Table 1's k, l, m, n).
Conv units inside a block are `branch{i}_{j}`, the j-th unit of branch i; the 1x3/3x1 pairs of Inception-C end in
`a`/`b`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax.models.layers import (
    VALID,
    ConvBN,
    LayerConfig,
    Widths,
    avg_pool_3x3,
    expanded_filter_bank,
    max_pool_3x3_s2,
)
from inception_jax.models.network import InceptionNet, check_num_blocks


class InceptionV4Stem(nn.Module):
    """The stem of Inception-v4 and of Inception-ResNet-v2 (paper Fig. 3): 299x299x3 -> 35x35x384."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        x = ConvBN(32, 3, cfg, strides=2, padding=VALID, name="Conv2d_1a_3x3")(x, train)
        x = ConvBN(32, 3, cfg, padding=VALID, name="Conv2d_2a_3x3")(x, train)
        x = ConvBN(64, 3, cfg, name="Conv2d_2b_3x3")(x, train)
        # Mixed_3a, 73x73x160: [max pool 3x3/2] [3x3/2 96].
        b1 = ConvBN(96, 3, cfg, strides=2, padding=VALID, name="Mixed_3a_branch1_0")(x, train)
        x = jnp.concatenate([max_pool_3x3_s2(x, cfg), b1], axis=-1)
        # Mixed_4a, 71x71x192: [1x1 64 -> 3x3 96] [1x1 64 -> 1x7 64 -> 7x1 64 -> 3x3 96].
        b0 = ConvBN(64, 1, cfg, name="Mixed_4a_branch0_0")(x, train)
        b0 = ConvBN(96, 3, cfg, padding=VALID, name="Mixed_4a_branch0_1")(b0, train)
        b1 = ConvBN(64, 1, cfg, name="Mixed_4a_branch1_0")(x, train)
        b1 = ConvBN(64, (1, 7), cfg, name="Mixed_4a_branch1_1")(b1, train)
        b1 = ConvBN(64, (7, 1), cfg, name="Mixed_4a_branch1_2")(b1, train)
        b1 = ConvBN(96, 3, cfg, padding=VALID, name="Mixed_4a_branch1_3")(b1, train)
        x = jnp.concatenate([b0, b1], axis=-1)
        # Mixed_5a, 35x35x384: [3x3/2 192] [max pool 3x3/2].
        b0 = ConvBN(192, 3, cfg, strides=2, padding=VALID, name="Mixed_5a_branch0_0")(x, train)
        return jnp.concatenate([b0, max_pool_3x3_s2(x, cfg)], axis=-1)


class InceptionA(nn.Module):
    """Inception-A, the 35x35 block of Inception-v4 (paper Fig. 4) -> 384 channels:
    [1x1 96] [1x1 64 -> 3x3 96] [1x1 64 -> 3x3 96 -> 3x3 96] [avg pool -> 1x1 96]."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        b0 = ConvBN(96, 1, cfg, name="branch0_0")(x, train)
        b1 = ConvBN(64, 1, cfg, name="branch1_0")(x, train)
        b1 = ConvBN(96, 3, cfg, name="branch1_1")(b1, train)
        b2 = ConvBN(64, 1, cfg, name="branch2_0")(x, train)
        b2 = ConvBN(96, 3, cfg, name="branch2_1")(b2, train)
        b2 = ConvBN(96, 3, cfg, name="branch2_2")(b2, train)
        b3 = ConvBN(96, 1, cfg, name="branch3_0")(avg_pool_3x3(x, cfg), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class ReductionA(nn.Module):
    """Reduction-A, 35x35 -> 17x17 (paper Fig. 7), parameterised by Table 1's k, l, m, n:
    [3x3/2 n] [1x1 k -> 3x3 l -> 3x3/2 m] [max pool 3x3/2] (the released graphs' order); depth = input + n + m.

    Table 1: Inception-v4 (192, 224, 256, 384), Inception-ResNet-v1 (192, 192, 256, 384), -v2 (256, 256, 384, 384).
    """

    cfg: LayerConfig
    k: int
    l: int  # noqa: E741  (the paper's name)
    m: int
    n: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        b0 = ConvBN(self.n, 3, cfg, strides=2, padding=VALID, name="branch0_0")(x, train)
        b1 = ConvBN(self.k, 1, cfg, name="branch1_0")(x, train)
        b1 = ConvBN(self.l, 3, cfg, name="branch1_1")(b1, train)
        b1 = ConvBN(self.m, 3, cfg, strides=2, padding=VALID, name="branch1_2")(b1, train)
        return jnp.concatenate([b0, b1, max_pool_3x3_s2(x, cfg)], axis=-1)


class InceptionB(nn.Module):
    """Inception-B, the 17x17 block of Inception-v4 (paper Fig. 5) -> 1024 channels: [1x1 384]
    [1x1 192 -> 1x7 224 -> 7x1 256] [1x1 192 -> 7x1 192 -> 1x7 224 -> 7x1 224 -> 1x7 256] [avg pool -> 1x1 128]."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        b0 = ConvBN(384, 1, cfg, name="branch0_0")(x, train)
        b1 = ConvBN(192, 1, cfg, name="branch1_0")(x, train)
        b1 = ConvBN(224, (1, 7), cfg, name="branch1_1")(b1, train)
        b1 = ConvBN(256, (7, 1), cfg, name="branch1_2")(b1, train)
        b2 = ConvBN(192, 1, cfg, name="branch2_0")(x, train)
        b2 = ConvBN(192, (7, 1), cfg, name="branch2_1")(b2, train)
        b2 = ConvBN(224, (1, 7), cfg, name="branch2_2")(b2, train)
        b2 = ConvBN(224, (7, 1), cfg, name="branch2_3")(b2, train)
        b2 = ConvBN(256, (1, 7), cfg, name="branch2_4")(b2, train)
        b3 = ConvBN(128, 1, cfg, name="branch3_0")(avg_pool_3x3(x, cfg), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class ReductionB(nn.Module):
    """Reduction-B, 17x17 -> 8x8: [1x1 -> 3x3/2] [1x1 -> 1x7 -> 7x1 -> 3x3/2] [max pool 3x3/2]. Inception-v4's
    (paper Fig. 8, -> 1536 channels) and Inception-v3's released Mixed_7a differ only in their `widths`."""

    cfg: LayerConfig
    widths: Widths

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        (a0, a1), (b0, b1, b2, b3) = self.widths
        b = ConvBN(a0, 1, cfg, name="branch0_0")(x, train)
        b = ConvBN(a1, 3, cfg, strides=2, padding=VALID, name="branch0_1")(b, train)
        c = ConvBN(b0, 1, cfg, name="branch1_0")(x, train)
        c = ConvBN(b1, (1, 7), cfg, name="branch1_1")(c, train)
        c = ConvBN(b2, (7, 1), cfg, name="branch1_2")(c, train)
        c = ConvBN(b3, 3, cfg, strides=2, padding=VALID, name="branch1_3")(c, train)
        return jnp.concatenate([b, c, max_pool_3x3_s2(x, cfg)], axis=-1)


class InceptionC(nn.Module):
    """Inception-C, the 8x8 block of Inception-v4 (paper Fig. 6) -> 1536 channels: [1x1 256]
    [1x1 384 -> (1x3 256, 3x1 256)] [1x1 384 -> 3x1 448 -> 1x3 512 -> (1x3 256, 3x1 256)] [avg pool -> 1x1 256]."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        b0 = ConvBN(256, 1, cfg, name="branch0_0")(x, train)
        b1 = ConvBN(384, 1, cfg, name="branch1_0")(x, train)
        b1 = expanded_filter_bank(b1, train, cfg, "branch1_1", 256)
        b2 = ConvBN(384, 1, cfg, name="branch2_0")(x, train)
        b2 = ConvBN(448, (3, 1), cfg, name="branch2_1")(b2, train)
        b2 = ConvBN(512, (1, 3), cfg, name="branch2_2")(b2, train)
        b2 = expanded_filter_bank(b2, train, cfg, "branch2_3", 256)
        b3 = ConvBN(256, 1, cfg, name="branch3_0")(avg_pool_3x3(x, cfg), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionV4(InceptionNet):
    """Inception-v4 (paper Fig. 9): stem, 4x Inception-A, Reduction-A, 7x Inception-B, Reduction-B, 3x Inception-C.

    `num_blocks` sets the A/B/C counts. The optional auxiliary head (not in the paper; in the released graph) sits on
    the last Inception-B.
    """

    num_blocks: tuple[int, int, int] = (4, 7, 3)

    def validate(self) -> None:
        super().validate()
        check_num_blocks(self.num_blocks)

    def backbone(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.layer_config
        num_a, num_b, num_c = self.num_blocks
        x = InceptionV4Stem(cfg, name="Stem")(x, train)
        for i in range(num_a):
            x = InceptionA(cfg, name=f"InceptionA_{i}")(x, train)
        x = ReductionA(cfg, 192, 224, 256, 384, name="ReductionA")(x, train)
        for i in range(num_b):
            x = InceptionB(cfg, name=f"InceptionB_{i}")(x, train)
        self.aux(x, train)
        x = ReductionB(cfg, ((192, 192), (256, 256, 320, 320)), name="ReductionB")(x, train)
        for i in range(num_c):
            x = InceptionC(cfg, name=f"InceptionC_{i}")(x, train)
        return x
