"""Inception-v4 (paper Fig. 3-9), with the released branch order the pretrained weights need.

Its stem and Reduction-A are shared with the Inception-ResNet networks (Reduction-A via Table 1's k, l, m, n).
Conv units inside a block are `branch{i}_{j}`; the 1x3/3x1 pairs of Inception-C end in `a`/`b`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax.models.layers import (
    ConvBN,
    LayerConfig,
    avg_pool_3x3,
    conv_branches,
    conv_sequence,
    max_pool_3x3_s2,
    split_1x3_3x1,
)
from inception_jax.models.network import InceptionNet

V = "VALID"


class InceptionV4Stem(nn.Module):
    """The stem of Inception-v4 and of Inception-ResNet-v2 (paper Fig. 3): 299x299x3 -> 35x35x384."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        x = ConvBN(32, (3, 3), cfg, strides=2, padding=V, name="Conv2d_1a_3x3")(x, train)
        x = ConvBN(32, (3, 3), cfg, padding=V, name="Conv2d_2a_3x3")(x, train)
        x = ConvBN(64, (3, 3), cfg, name="Conv2d_2b_3x3")(x, train)
        x = jnp.concatenate(  # Mixed_3a: 73x73x160
            [max_pool_3x3_s2(x), conv_sequence(x, train, cfg, "Mixed_3a_branch1", [(96, 3, 2, V)])], axis=-1
        )
        x = jnp.concatenate(  # Mixed_4a: 71x71x192
            conv_branches(
                x,
                train,
                cfg,
                [
                    ("Mixed_4a_branch0", [(64, 1), (96, 3, 1, V)]),
                    ("Mixed_4a_branch1", [(64, 1), (64, (1, 7)), (64, (7, 1)), (96, 3, 1, V)]),
                ],
            ),
            axis=-1,
        )
        return jnp.concatenate(  # Mixed_5a: 35x35x384
            [conv_sequence(x, train, cfg, "Mixed_5a_branch0", [(192, 3, 2, V)]), max_pool_3x3_s2(x)], axis=-1
        )


class InceptionA(nn.Module):
    """Inception-A, the 35x35 block of Inception-v4 (paper Fig. 4) -> 384 channels."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        return jnp.concatenate(
            [
                *conv_branches(
                    x,
                    train,
                    cfg,
                    [("branch0", [(96, 1)]), ("branch1", [(64, 1), (96, 3)]), ("branch2", [(64, 1), (96, 3), (96, 3)])],
                ),
                conv_sequence(avg_pool_3x3(x, cfg.avg_pool_include_padding), train, cfg, "branch3", [(96, 1)]),
            ],
            axis=-1,
        )


class ReductionA(nn.Module):
    """Reduction-A, 35x35 -> 17x17 (paper Fig. 7), parameterised by Table 1's k, l, m, n:
    [max pool 3x3/2] [3x3/2 n] [1x1 k -> 3x3 l -> 3x3/2 m]; output depth = input + n + m.

    Table 1: Inception-v4 (192, 224, 256, 384), Inception-ResNet-v1 (192, 192, 256, 384), -v2 (256, 256, 384, 384).
    Concatenation follows the released graphs: [n] [k, l, m] [pool].
    """

    cfg: LayerConfig
    k: int
    l: int  # noqa: E741  (the paper's name)
    m: int
    n: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        return jnp.concatenate(
            [
                conv_sequence(x, train, cfg, "branch0", [(self.n, 3, 2, V)]),
                conv_sequence(x, train, cfg, "branch1", [(self.k, 1), (self.l, 3), (self.m, 3, 2, V)]),
                max_pool_3x3_s2(x),
            ],
            axis=-1,
        )


class InceptionB(nn.Module):
    """Inception-B, the 17x17 block of Inception-v4 (paper Fig. 5) -> 1024 channels."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        return jnp.concatenate(
            [
                *conv_branches(
                    x,
                    train,
                    cfg,
                    [
                        ("branch0", [(384, 1)]),
                        ("branch1", [(192, 1), (224, (1, 7)), (256, (7, 1))]),
                        ("branch2", [(192, 1), (192, (7, 1)), (224, (1, 7)), (224, (7, 1)), (256, (1, 7))]),
                    ],
                ),
                conv_sequence(avg_pool_3x3(x, cfg.avg_pool_include_padding), train, cfg, "branch3", [(128, 1)]),
            ],
            axis=-1,
        )


class ReductionB(nn.Module):
    """Reduction-B of Inception-v4, 17x17 -> 8x8 (paper Fig. 8) -> 1536 channels."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        return jnp.concatenate(
            [
                *conv_branches(
                    x,
                    train,
                    cfg,
                    [
                        ("branch0", [(192, 1), (192, 3, 2, V)]),
                        ("branch1", [(256, 1), (256, (1, 7)), (320, (7, 1)), (320, 3, 2, V)]),
                    ],
                ),
                max_pool_3x3_s2(x),
            ],
            axis=-1,
        )


class InceptionC(nn.Module):
    """Inception-C, the 8x8 block of Inception-v4 (paper Fig. 6) -> 1536 channels."""

    cfg: LayerConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        b0, b1, b2 = conv_branches(
            x,
            train,
            cfg,
            [("branch0", [(256, 1)]), ("branch1", [(384, 1)]), ("branch2", [(384, 1), (448, (3, 1)), (512, (1, 3))])],
        )
        return jnp.concatenate(
            [
                b0,
                split_1x3_3x1(b1, train, cfg, "branch1_1", 256),
                split_1x3_3x1(b2, train, cfg, "branch2_3", 256),
                conv_sequence(avg_pool_3x3(x, cfg.avg_pool_include_padding), train, cfg, "branch3", [(256, 1)]),
            ],
            axis=-1,
        )


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
        x = ReductionB(cfg, name="ReductionB")(x, train)
        for i in range(num_c):
            x = InceptionC(cfg, name=f"InceptionC_{i}")(x, train)
        return x


def check_num_blocks(num_blocks: tuple[int, ...]) -> None:
    """Raises ValueError unless num_blocks is three non-negative counts (A, B, C)."""
    if len(tuple(num_blocks)) != 3 or any(not isinstance(n, int) or n < 0 for n in num_blocks):
        raise ValueError(f"num_blocks must be three non-negative ints (A, B, C), got {num_blocks!r}")
