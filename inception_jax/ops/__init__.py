"""The primitive operations of the four networks, each with a plain reference implementation and CPU kernels.

- `conv`: NHWC x HWIO convolution (`lax.conv_general_dilated`; on the CPU: 1x1 as matmuls, strided input gradients
  by phases, padding-only taps dropped, Winograd for the wide factorised and 35x35 3x3 convs).
- `batchnorm`: BatchNorm with an optional ReLU, flax's statistics (on the CPU: a hand-written training gradient).
- `pooling`: TensorFlow's 3x3 max pool (VALID) and average pool (SAME, padding excluded) (`lax.reduce_window`; on
  the CPU: strided views that fuse with their neighbours).
- `barrier`: the residual stream's fusion barrier (an identity; on the CPU: a buffer XLA cannot recompute).

Every op takes `impl`, one of `IMPLEMENTATIONS` (see `implementation.py`): "reference", "cpu", or "auto", which
lowers the CPU kernels for the CPU and the reference for every other platform. All three compute the same values
and gradients (to float rounding) and use no variables of their own, so checkpoints work in every mode.
"""

from inception_jax.ops import barrier, batchnorm, conv, pooling
from inception_jax.ops.implementation import IMPLEMENTATIONS, check_implementation, select

__all__ = ["IMPLEMENTATIONS", "barrier", "batchnorm", "check_implementation", "conv", "pooling", "select"]
