"""Inception-ResNet-v1 and -v2 (paper Fig. 10-19).

Both follow the schema of Fig. 15: stem, A blocks, Reduction-A, B blocks, Reduction-B, C blocks. The residual
blocks share one pattern (`InceptionResNetBlock`); the two networks differ in their stems and in the widths of
their blocks (`InceptionResNetWidths`, stated once per network), and the residual scales are per block kind (A, B, C).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax.models.inception_v3 import InceptionV3A, InceptionV3Stem
from inception_jax.models.inception_v4 import InceptionV4Stem, ReductionA
from inception_jax.models.layers import VALID, ConvBN, InceptionResNetBlock, LayerConfig, Widths, max_pool_3x3_s2
from inception_jax.models.network import InceptionNet, check_num_blocks


class InceptionResNetA(InceptionResNetBlock):
    """Inception-ResNet-A, 35x35 (paper Fig. 10 for v1, Fig. 16 for v2): [1x1] [1x1 -> 3x3] [1x1 -> 3x3 -> 3x3]."""

    def branches(self, x: jax.Array, train: bool) -> list[jax.Array]:
        cfg = self.cfg
        (a0,), (b0, b1), (c0, c1, c2) = self.widths
        branch0 = ConvBN(a0, 1, cfg, name="branch0_0")(x, train)
        branch1 = ConvBN(b0, 1, cfg, name="branch1_0")(x, train)
        branch1 = ConvBN(b1, 3, cfg, name="branch1_1")(branch1, train)
        branch2 = ConvBN(c0, 1, cfg, name="branch2_0")(x, train)
        branch2 = ConvBN(c1, 3, cfg, name="branch2_1")(branch2, train)
        branch2 = ConvBN(c2, 3, cfg, name="branch2_2")(branch2, train)
        return [branch0, branch1, branch2]


class _FactorisedResidual(InceptionResNetBlock):
    """The B and C blocks' branches: [1x1] [1x1 -> 1xk -> kx1], k = `KERNEL`."""

    KERNEL: ClassVar[int]

    def branches(self, x: jax.Array, train: bool) -> list[jax.Array]:
        cfg, k = self.cfg, self.KERNEL
        (a0,), (b0, b1, b2) = self.widths
        branch0 = ConvBN(a0, 1, cfg, name="branch0_0")(x, train)
        branch1 = ConvBN(b0, 1, cfg, name="branch1_0")(x, train)
        branch1 = ConvBN(b1, (1, k), cfg, name="branch1_1")(branch1, train)
        branch1 = ConvBN(b2, (k, 1), cfg, name="branch1_2")(branch1, train)
        return [branch0, branch1]


class InceptionResNetB(_FactorisedResidual):
    """Inception-ResNet-B, 17x17 (paper Fig. 11 for v1, Fig. 17 for v2): [1x1] [1x1 -> 1x7 -> 7x1]."""

    KERNEL = 7


class InceptionResNetC(_FactorisedResidual):
    """Inception-ResNet-C, 8x8 (paper Fig. 13 for v1, Fig. 19 for v2): [1x1] [1x1 -> 1x3 -> 3x1]."""

    KERNEL = 3


class ResidualReductionB(nn.Module):
    """Reduction-B of the Inception-ResNets, 17x17 -> 8x8 (paper Fig. 12 for v1, Fig. 18 for v2):
    [1x1 -> 3x3/2] [1x1 -> 3x3/2] [1x1 -> 3x3 -> 3x3/2] [max pool 3x3/2]."""

    cfg: LayerConfig
    widths: Widths

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        (a0, a1), (b0, b1), (c0, c1, c2) = self.widths
        branch0 = ConvBN(a0, 1, cfg, name="branch0_0")(x, train)
        branch0 = ConvBN(a1, 3, cfg, strides=2, padding=VALID, name="branch0_1")(branch0, train)
        branch1 = ConvBN(b0, 1, cfg, name="branch1_0")(x, train)
        branch1 = ConvBN(b1, 3, cfg, strides=2, padding=VALID, name="branch1_1")(branch1, train)
        branch2 = ConvBN(c0, 1, cfg, name="branch2_0")(x, train)
        branch2 = ConvBN(c1, 3, cfg, name="branch2_1")(branch2, train)
        branch2 = ConvBN(c2, 3, cfg, strides=2, padding=VALID, name="branch2_2")(branch2, train)
        return jnp.concatenate([branch0, branch1, branch2, max_pool_3x3_s2(x, cfg)], axis=-1)


class InceptionResNetWidths(NamedTuple):
    """The filter counts of one Inception-ResNet: per branch for the A, B, C blocks and Reduction-B, and
    Table 1's (k, l, m, n) for Reduction-A."""

    a: Widths
    reduction_a: tuple[int, int, int, int]
    b: Widths
    reduction_b: Widths
    c: Widths


class _InceptionResNet(InceptionNet):
    """The schema of Fig. 15 with its fields and checks; a network supplies its widths, block counts and stem."""

    WIDTHS: ClassVar[InceptionResNetWidths]
    residual_scales: tuple[float, float, float] = (0.17, 0.10, 0.20)
    num_blocks: tuple[int, int, int] | None = None  # None: the network's own counts

    def validate(self) -> None:
        super().validate()
        scales = tuple(self.residual_scales)
        if len(scales) != 3 or any(not isinstance(s, int | float) or not s > 0 for s in scales):
            raise ValueError(
                f"residual_scales must be three positive numbers (A, B, C), got {self.residual_scales!r}; "
                "the paper uses 0.1-0.3 and the released code 0.17, 0.10, 0.20"
            )
        if self.num_blocks is not None:
            check_num_blocks(self.num_blocks)

    def default_blocks(self) -> tuple[int, int, int]:
        return (5, 10, 5)  # Fig. 15

    def stem(self, x: jax.Array, train: bool) -> jax.Array:
        raise NotImplementedError

    def top(self, x: jax.Array, train: bool, num_c: int) -> jax.Array:
        """The C blocks (and whatever the network puts after them)."""
        return self.residual_stack(x, train, InceptionResNetC, "BlockC", num_c, self.WIDTHS.c, self.residual_scales[2])

    def residual_stack(self, x: jax.Array, train: bool, block: type[InceptionResNetBlock], name: str, count: int,
                       widths: Widths, scale: float) -> jax.Array:  # fmt: skip
        for i in range(count):
            x = block(self.layer_config, widths, scale, name=f"{name}_{i}")(x, train)
        return x

    def backbone(self, x: jax.Array, train: bool) -> jax.Array:
        cfg, widths = self.layer_config, self.WIDTHS
        num_a, num_b, num_c = self.num_blocks or self.default_blocks()
        scale_a, scale_b, _ = self.residual_scales
        x = self.stem(x, train)
        x = self.residual_stack(x, train, InceptionResNetA, "BlockA", num_a, widths.a, scale_a)
        x = ReductionA(cfg, *widths.reduction_a, name="ReductionA")(x, train)
        x = self.residual_stack(x, train, InceptionResNetB, "BlockB", num_b, widths.b, scale_b)
        self.aux(x, train)
        x = ResidualReductionB(cfg, widths.reduction_b, name="ReductionB")(x, train)
        return self.top(x, train, num_c)


class InceptionResNetV1(_InceptionResNet):
    """Inception-ResNet-v1 (paper Fig. 14 stem, Fig. 10-13 blocks, Fig. 15 schema): 5x A, Reduction-A, 10x B,
    Reduction-B, 5x C -> 1792. No official weights exist."""

    WIDTHS = InceptionResNetWidths(
        a=((32,), (32, 32), (32, 32, 32)),
        reduction_a=(192, 192, 256, 384),
        b=((128,), (128, 128, 128)),
        reduction_b=((256, 384), (256, 256), (256, 256, 256)),
        c=((192,), (192, 192, 192)),
    )

    def stem(self, x: jax.Array, train: bool) -> jax.Array:
        return InceptionV3Stem(self.layer_config, reduce_filters=256, name="Stem")(x, train)


VARIANTS = ("released", "paper")


class InceptionResNetV2(_InceptionResNet):
    """Inception-ResNet-v2 in two variants.

    `released` (TF-slim / Keras / timm, the only one with ImageNet weights): v3 stem + Mixed_5b (35x35x320),
    10x A, Reduction-A, 20x B, Reduction-B, 9x C, one more C with scale 1.0 and no ReLU, 1x1 1536 conv.
    `paper` (Fig. 15-19): Inception-v4 stem (35x35x384), 5x A, Reduction-A, 10x B, Reduction-B, 5x C -> 2144.
    `num_blocks` counts the final linear C block of `released` among the C blocks. The auxiliary head sits on the
    end of the B stack.
    """

    WIDTHS = InceptionResNetWidths(
        a=((32,), (32, 32), (32, 48, 64)),
        reduction_a=(256, 256, 384, 384),
        b=((192,), (128, 160, 192)),
        reduction_b=((256, 384), (256, 288), (256, 288, 320)),
        c=((192,), (192, 224, 256)),
    )
    variant: str = "released"

    def validate(self) -> None:
        super().validate()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.variant == "released" and self.num_blocks is not None and self.num_blocks[2] < 1:
            raise ValueError("the released Inception-ResNet-v2 needs at least one C block (its final linear block)")

    def default_blocks(self) -> tuple[int, int, int]:
        return (10, 20, 10) if self.variant == "released" else super().default_blocks()

    def stem(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.layer_config
        if self.variant == "paper":
            return InceptionV4Stem(cfg, name="Stem")(x, train)
        x = InceptionV3Stem(cfg, name="Stem")(x, train)
        return InceptionV3A(cfg, branch0_filters=96, pool_filters=64, name="Mixed_5b")(x, train)

    def top(self, x: jax.Array, train: bool, num_c: int) -> jax.Array:
        if self.variant == "paper":
            return super().top(x, train, num_c)
        cfg = self.layer_config
        x = super().top(x, train, num_c - 1)
        x = InceptionResNetC(cfg, self.WIDTHS.c, 1.0, activate=False, name="BlockC_final")(x, train)
        return ConvBN(1536, 1, cfg, name="Conv2d_7b_1x1")(x, train)
