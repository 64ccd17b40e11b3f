"""Inception-ResNet-v1 and -v2 (paper Fig. 10-19).

The residual blocks share one pattern (`InceptionResNetBlock`): their three kinds differ only in branch kernels,
and the two networks only in branch widths, block counts and stem. Residual scales are per block kind (A, B, C).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax.models.inception_v3 import InceptionV3A, InceptionV3Stem
from inception_jax.models.inception_v4 import InceptionV4Stem, ReductionA, check_num_blocks
from inception_jax.models.layers import ConvBN, InceptionResNetBlock, LayerConfig, conv_branches, max_pool_3x3_s2
from inception_jax.models.network import InceptionNet

Widths = tuple[tuple[int, ...], ...]


class _ResidualBranches(InceptionResNetBlock):
    """A residual block whose branches are plain conv sequences: `widths[i][j]` filters of `KERNELS[i][j]`."""

    KERNELS: ClassVar[tuple[tuple, ...]] = ()
    widths: Widths = ()

    def branches(self, x: jax.Array, train: bool) -> list[jax.Array]:
        return conv_branches(
            x,
            train,
            self.cfg,
            [
                (f"branch{i}", list(zip(widths, kernels, strict=True)))
                for i, (widths, kernels) in enumerate(zip(self.widths, self.KERNELS, strict=True))
            ],
        )


class InceptionResNetA(_ResidualBranches):
    """Inception-ResNet-A, 35x35 (paper Fig. 10 for v1, Fig. 16 for v2): [1x1] [1x1 -> 3x3] [1x1 -> 3x3 -> 3x3]."""

    KERNELS = ((1,), (1, 3), (1, 3, 3))
    widths: Widths = ((32,), (32, 32), (32, 48, 64))


class InceptionResNetB(_ResidualBranches):
    """Inception-ResNet-B, 17x17 (paper Fig. 11 for v1, Fig. 17 for v2): [1x1] [1x1 -> 1x7 -> 7x1]."""

    KERNELS = ((1,), (1, (1, 7), (7, 1)))
    widths: Widths = ((192,), (128, 160, 192))


class InceptionResNetC(_ResidualBranches):
    """Inception-ResNet-C, 8x8 (paper Fig. 13 for v1, Fig. 19 for v2): [1x1] [1x1 -> 1x3 -> 3x1]."""

    KERNELS = ((1,), (1, (1, 3), (3, 1)))
    widths: Widths = ((192,), (192, 224, 256))


class ResidualReductionB(nn.Module):
    """Reduction-B of the Inception-ResNets, 17x17 -> 8x8 (paper Fig. 12 for v1, Fig. 18 for v2):
    [1x1 -> 3x3/2] [1x1 -> 3x3/2] [1x1 -> 3x3 -> 3x3/2] [max pool 3x3/2]."""

    cfg: LayerConfig
    widths: Widths = ((256, 384), (256, 288), (256, 288, 320))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        (a0, a1), (b0, b1), (c0, c1, c2) = self.widths
        cfg, v = self.cfg, "VALID"
        branches = [
            ("branch0", [(a0, 1), (a1, 3, 2, v)]),
            ("branch1", [(b0, 1), (b1, 3, 2, v)]),
            ("branch2", [(c0, 1), (c1, 3), (c2, 3, 2, v)]),
        ]
        return jnp.concatenate([*conv_branches(x, train, cfg, branches), max_pool_3x3_s2(x)], axis=-1)


class _InceptionResNet(InceptionNet):
    """Fields and checks both Inception-ResNets share."""

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

    def residual_stack(
        self,
        x: jax.Array,
        train: bool,
        block: type[_ResidualBranches],
        name: str,
        count: int,
        scale: float,
        widths: Widths,
    ) -> jax.Array:
        for i in range(count):
            x = block(self.layer_config, scale, widths=widths, name=f"{name}_{i}")(x, train)
        return x


class InceptionResNetV1(_InceptionResNet):
    """Inception-ResNet-v1 (paper Fig. 14 stem, Fig. 10-13 blocks, Fig. 15 schema): 5x A, Reduction-A, 10x B,
    Reduction-B, 5x C -> 1792. No official weights exist."""

    def backbone(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.layer_config
        num_a, num_b, num_c = self.num_blocks or (5, 10, 5)
        scale_a, scale_b, scale_c = self.residual_scales
        x = InceptionV3Stem(cfg, reduce_filters=256, name="Stem")(x, train)
        x = self.residual_stack(x, train, InceptionResNetA, "BlockA", num_a, scale_a, ((32,), (32, 32), (32, 32, 32)))
        x = ReductionA(cfg, 192, 192, 256, 384, name="ReductionA")(x, train)
        x = self.residual_stack(x, train, InceptionResNetB, "BlockB", num_b, scale_b, ((128,), (128, 128, 128)))
        self.aux(x, train)
        x = ResidualReductionB(cfg, ((256, 384), (256, 256), (256, 256, 256)), name="ReductionB")(x, train)
        return self.residual_stack(x, train, InceptionResNetC, "BlockC", num_c, scale_c, ((192,), (192, 192, 192)))


VARIANTS = ("released", "paper")


class InceptionResNetV2(_InceptionResNet):
    """Inception-ResNet-v2 in two variants.

    `released` (TF-slim / Keras / timm, the only one with ImageNet weights): v3 stem + Mixed_5b (35x35x320),
    10x A, Reduction-A, 20x B, Reduction-B, 9x C, one more C with scale 1.0 and no ReLU, 1x1 1536 conv.
    `paper` (Fig. 15-19): Inception-v4 stem (35x35x384), 5x A, Reduction-A, 10x B, Reduction-B, 5x C -> 2144.
    `num_blocks` counts the final linear C block of `released` among the C blocks. The auxiliary head sits on the
    end of the B stack.
    """

    variant: str = "released"

    def validate(self) -> None:
        super().validate()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.variant == "released" and self.num_blocks is not None and self.num_blocks[2] < 1:
            raise ValueError("the released Inception-ResNet-v2 needs at least one C block (its final linear block)")

    def backbone(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.layer_config
        released = self.variant == "released"
        num_a, num_b, num_c = self.num_blocks or ((10, 20, 10) if released else (5, 10, 5))
        scale_a, scale_b, scale_c = self.residual_scales
        widths_a: Widths = ((32,), (32, 32), (32, 48, 64))
        widths_b: Widths = ((192,), (128, 160, 192))
        widths_c: Widths = ((192,), (192, 224, 256))
        if released:
            x = InceptionV3Stem(cfg, name="Stem")(x, train)
            x = InceptionV3A(cfg, branch0_filters=96, pool_filters=64, name="Mixed_5b")(x, train)
        else:
            x = InceptionV4Stem(cfg, name="Stem")(x, train)
        x = self.residual_stack(x, train, InceptionResNetA, "BlockA", num_a, scale_a, widths_a)
        x = ReductionA(cfg, 256, 256, 384, 384, name="ReductionA")(x, train)
        x = self.residual_stack(x, train, InceptionResNetB, "BlockB", num_b, scale_b, widths_b)
        self.aux(x, train)
        x = ResidualReductionB(cfg, name="ReductionB")(x, train)
        if not released:
            return self.residual_stack(x, train, InceptionResNetC, "BlockC", num_c, scale_c, widths_c)
        x = self.residual_stack(x, train, InceptionResNetC, "BlockC", num_c - 1, scale_c, widths_c)
        x = InceptionResNetC(cfg, 1.0, activate=False, widths=widths_c, name="BlockC_final")(x, train)
        return ConvBN(1536, (1, 1), cfg, name="Conv2d_7b_1x1")(x, train)
