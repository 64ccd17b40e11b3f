"""BatchNorm folded into the preceding convolution, for inference.

In eval mode a conv unit computes relu((conv(x, W) - mean) * gamma / sqrt(var + eps) + beta), which is
relu(conv(x, W * s) + (beta - mean * s)) with s = gamma / sqrt(var + eps) per output channel: one conv with a bias
and no normalisation pass over the activations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from inception_jax.models.network import InceptionNet


def fold_batchnorm(model: InceptionNet, variables: Mapping[str, Any]) -> tuple[InceptionNet, dict]:
    """Returns `(inference model, its variables)`: every conv unit's BatchNorm folded into its kernel and bias.

    The folded model computes the same eval-mode function (to float rounding) and refuses `train=True`.
    """
    if model.bn_folded:
        raise ValueError("this model's BatchNorm is already folded")
    if "batch_stats" not in variables:
        raise ValueError("fold_batchnorm needs the variables' 'batch_stats' (BN moving mean and variance)")
    params = _fold(variables["params"], variables["batch_stats"], model.bn_epsilon, path="params")
    return model.clone(bn_folded=True), {"params": params}


def _fold(params: Mapping[str, Any], stats: Mapping[str, Any] | None, epsilon: float, path: str) -> dict:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(value, Mapping):
            out[key] = value
            continue
        sub_stats = (stats or {}).get(key)
        if "conv" in value and "bn" in value:
            out[key] = _fold_unit(value, sub_stats, epsilon, f"{path}/{key}")
        else:
            out[key] = _fold(value, sub_stats, epsilon, f"{path}/{key}")
    return out


def _fold_unit(unit: Mapping[str, Any], stats: Mapping[str, Any] | None, epsilon: float, path: str) -> dict:
    if stats is None or "bn" not in stats:
        raise ValueError(f"{path}: BatchNorm has parameters but no moving statistics in batch_stats")
    kernel, bn, moments = unit["conv"]["kernel"], unit["bn"], stats["bn"]
    scale = bn.get("scale", 1.0) / jnp.sqrt(moments["var"].astype(jnp.float32) + epsilon)
    bias = bn["bias"] - moments["mean"] * scale
    return {"conv": {"kernel": (kernel * scale).astype(kernel.dtype), "bias": bias.astype(kernel.dtype)}}
