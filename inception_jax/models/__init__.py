"""The four networks of the paper and a registry: `create(name, **overrides)`."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from inception_jax.models.folding import fold_batchnorm
from inception_jax.models.inception_resnet import VARIANTS, InceptionResNetV1, InceptionResNetV2
from inception_jax.models.inception_v3 import InceptionV3
from inception_jax.models.inception_v4 import InceptionV4
from inception_jax.models.network import MIN_INPUT_SIZE, InceptionNet, dead_fraction

REGISTRY: dict[str, type[InceptionNet]] = {
    "inception_v3": InceptionV3,
    "inception_v4": InceptionV4,
    "inception_resnet_v1": InceptionResNetV1,
    "inception_resnet_v2": InceptionResNetV2,
}
MODEL_NAMES = tuple(REGISTRY)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def check_name(name: str) -> None:
    """Raises ValueError unless `name` is one of the four networks."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def create(name: str, **overrides: Any) -> InceptionNet:
    """Builds a network by name; `overrides` set its fields (num_classes, residual_scales, dtype, ops, ...).

    `dtype` may be a string ("float32", "bfloat16"). `ops` picks the primitive operations' implementation:
    "auto" (default: the CPU kernels where the program is lowered for the CPU, the reference elsewhere),
    "reference" or "cpu" (see `inception_jax.ops`). Unknown names or fields and bad values raise ValueError.
    """
    check_name(name)
    cls = REGISTRY[name]
    allowed = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"{name} has no field(s) {unknown}; allowed fields: {sorted(allowed)}")
    if isinstance(overrides.get("dtype"), str):
        if overrides["dtype"] not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {overrides['dtype']!r}")
        overrides["dtype"] = DTYPES[overrides["dtype"]]
    for key in ("residual_scales", "num_blocks"):
        if isinstance(overrides.get(key), list):
            overrides[key] = tuple(overrides[key])
    return cls(**overrides)


def init(model: InceptionNet, image_size: int = 299, seed: int = 0, batch_size: int = 1) -> dict:
    """Initial variables ({'params', 'batch_stats'}) for square inputs of `image_size`, jitted for speed. The same
    in every `ops` mode; computed with the reference ops, whose program is the smallest to compile."""
    x = jnp.zeros((batch_size, image_size, image_size, 3), jnp.float32)
    rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
    reference = model.clone(ops="reference")
    return jax.jit(lambda r, x: reference.init(r, x, train=False))(rngs, x)


def count_params(params: Any) -> int:
    """Number of trainable scalars (BN moving statistics are not parameters)."""
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def direct_flops(jitted: Any, *args: Any) -> float:
    """FLOPs of one call of a jitted function by XLA's cost analysis of the program as lowered for a GPU: with a
    network in "auto" or "reference" ops, direct convolutions, comparable with other implementations (the CPU
    kernels' Winograd convolutions do fewer multiplies)."""
    cost = jitted.trace(*args).lower(lowering_platforms=("cuda",)).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def inference_macs(model: InceptionNet, variables: dict, image_size: int = 299) -> float:
    """Multiply-accumulates of one eval-mode forward pass, from XLA's cost analysis (flops / 2)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return direct_flops(jax.jit(lambda v, x: model.apply(v, x, train=False)), variables, x) / 2


__all__ = [
    "MIN_INPUT_SIZE",
    "MODEL_NAMES",
    "VARIANTS",
    "InceptionNet",
    "InceptionResNetV1",
    "InceptionResNetV2",
    "InceptionV3",
    "InceptionV4",
    "check_name",
    "count_params",
    "create",
    "dead_fraction",
    "direct_flops",
    "fold_batchnorm",
    "inference_macs",
]
