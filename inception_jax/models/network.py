"""What the four networks share: the knobs, input checks, the classifier head and the auxiliary head hook."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from inception_jax.models.layers import AuxHead, LayerConfig, kernel_init
from inception_jax.ops import check_implementation

MIN_INPUT_SIZE = 75
# Name of the checkpointed values under `remat`: the output of every block (each direct submodule of a network).
BLOCK_OUTPUT = "inception_block_output"


class InceptionNet(nn.Module):
    """Base of the four networks: backbone -> global average pool -> dropout -> dense.

    Applied as a pure function: `model.apply(variables, x, train=...)` with x NHWC in [-1, 1], at least 75x75.
    Returns float32 logits, or with `include_top=False` the final feature map (as Keras applications'
    `include_top=False`: no pooling, no classifier). With `mutable=["intermediates"]` it also returns the final
    feature map before pooling (`features`) and, when `aux_logits` is set, the auxiliary classifier's logits
    (`aux_logits`, computed only in training and at initialisation).
    """

    num_classes: int = 1000
    include_top: bool = True  # False: a feature extractor, without the global pool, dropout and classifier
    dropout_rate: float = 0.2  # the paper's keep probability 0.8
    aux_logits: bool = False
    remat: bool = False  # training keeps only block outputs and recomputes the rest in the backward pass
    # The units' settings, documented in LayerConfig (whose defaults these are).
    depth_multiplier: float = LayerConfig.depth_multiplier
    min_depth: int = LayerConfig.min_depth
    bn_momentum: float = LayerConfig.bn_momentum
    bn_epsilon: float = LayerConfig.bn_epsilon
    bn_scale: bool = LayerConfig.bn_scale
    bn_axis_name: str | None = LayerConfig.bn_axis_name
    avg_pool_include_padding: bool = LayerConfig.avg_pool_include_padding
    bn_folded: bool = LayerConfig.bn_folded
    ops: str = LayerConfig.ops
    dtype: Any = LayerConfig.dtype

    def __post_init__(self) -> None:
        self.validate()
        super().__post_init__()

    def validate(self) -> None:
        """Raises ValueError for settings that cannot build a network."""
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if not self.depth_multiplier > 0:
            raise ValueError(f"depth_multiplier must be > 0, got {self.depth_multiplier!r}")
        if not isinstance(self.min_depth, int) or self.min_depth < 1:
            raise ValueError(f"min_depth must be a positive int, got {self.min_depth!r}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum!r}")
        if not self.bn_epsilon > 0:
            raise ValueError(f"bn_epsilon must be > 0, got {self.bn_epsilon!r}")
        check_implementation(self.ops)

    @property
    def layer_config(self) -> LayerConfig:
        return LayerConfig.from_network(self)

    def backbone(self, x: jax.Array, train: bool) -> jax.Array:
        """Image -> final feature map (before global average pooling). Calls `self.aux` where the aux head sits."""
        raise NotImplementedError

    def aux(self, x: jax.Array, train: bool) -> None:
        """Runs the auxiliary classifier on `x` when enabled; its logits go to the `intermediates` collection."""
        if self.aux_logits and (train or self.is_initializing()):
            logits = AuxHead(self.num_classes, self.layer_config, name="AuxLogits")(x, train)
            self.sow("intermediates", "aux_logits", logits.astype(jnp.float32))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input(x)
        features = self.features(x.astype(self.dtype), train)
        self.sow("intermediates", "features", features)
        if not self.include_top:
            return features.astype(jnp.float32)
        x = jnp.mean(features, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="Dropout")(x)
        x = nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype, name="Logits")(x)
        return x.astype(jnp.float32)

    def features(self, x: jax.Array, train: bool) -> jax.Array:
        """The backbone, under per-block rematerialisation when `remat` is set and training.

        Every block's output is saved for the backward pass and everything inside a block is recomputed from it:
        activation memory falls from all layers' outputs to the blocks' outputs, for about one more forward pass.
        """
        if not (self.remat and train):
            return self.backbone(x, train)

        def tagged_backbone(network: InceptionNet, x: jax.Array) -> jax.Array:
            with nn.intercept_methods(_name_block_outputs):
                return network.backbone(x, train)

        policy = jax.checkpoint_policies.save_only_these_names(BLOCK_OUTPUT)
        return nn.remat(tagged_backbone, policy=policy)(self, x)


def _name_block_outputs(next_fun: Any, args: tuple, kwargs: dict, context: Any) -> Any:
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module.parent, InceptionNet):
        out = jax.tree.map(lambda a: checkpoint_name(a, BLOCK_OUTPUT), out)
    return out


def check_input(x: jax.Array) -> None:
    """Raises ValueError unless x is an NHWC batch of 3-channel images of at least 75x75."""
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC batch of shape [batch, height, width, 3], got shape {tuple(x.shape)}")
    if x.shape[-1] != 3:
        raise ValueError(
            f"expected 3 channels (RGB, NHWC layout), got {x.shape[-1]} in shape {tuple(x.shape)}; "
            "expand grayscale to 3 channels and put channels last"
        )
    if min(x.shape[1], x.shape[2]) < MIN_INPUT_SIZE:
        raise ValueError(
            f"input {x.shape[1]}x{x.shape[2]} is smaller than the minimum {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
            "these networks accept (the VALID convs and pools would shrink it to nothing); resize the images"
        )


def dead_fraction(features: jax.Array) -> jax.Array:
    """Fraction of exactly-zero activations in a feature map: the paper's failure signature (§3.3: unscaled wide
    residual nets "died", the last layer before the average pool producing only zeros)."""
    return jnp.mean((features == 0).astype(jnp.float32))


def dead_channel_fraction(features: jax.Array) -> jax.Array:
    """Fraction of a feature map's channels that are exactly zero at every position of every example: the paper's
    death (§3.3) channel by channel. A channel that fires anywhere in the batch is alive; 1.0 means the map is all
    zeros, whatever the input."""
    return jnp.mean(jnp.all(features == 0, axis=tuple(range(features.ndim - 1))).astype(jnp.float32))


def check_num_blocks(num_blocks: tuple[int, ...]) -> None:
    """Raises ValueError unless num_blocks is three non-negative counts (A, B, C)."""
    if len(tuple(num_blocks)) != 3 or any(not isinstance(n, int) or n < 0 for n in num_blocks):
        raise ValueError(f"num_blocks must be three non-negative ints (A, B, C), got {num_blocks!r}")
