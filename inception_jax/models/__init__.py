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
from inception_jax.models.network import MIN_INPUT_SIZE, InceptionNet, dead_channel_fraction, dead_fraction

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


def init_variables(model: InceptionNet, rng: jax.Array, image_size: int, batch_size: int = 1) -> dict:
    """Fresh {'params', 'batch_stats'} for square `image_size` inputs (traceable: jit it, with output shardings
    to build each device's shard only). The weights are drawn from an RngBitGenerator key derived from `rng`:
    threefry keys would unroll into ~10x more HLO and triple init's compile time. The same in every `ops` mode;
    computed with the reference ops, whose program is the smallest to compile."""
    rbg = jax.random.key(jax.random.randint(rng, (), 0, 2**31 - 1), impl="rbg")
    params_rng, dropout_rng = jax.random.split(rbg)
    x = jnp.zeros((batch_size, image_size, image_size, 3), jnp.float32)
    return dict(model.clone(ops="reference").init({"params": params_rng, "dropout": dropout_rng}, x, train=False))


def init(model: InceptionNet, image_size: int = 299, seed: int = 0, batch_size: int = 1) -> dict:
    """`init_variables` from an integer seed, jitted."""
    jitted = jax.jit(init_variables, static_argnums=(0, 2, 3))
    return jitted(model, jax.random.key(seed), image_size, batch_size)


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
    "dead_channel_fraction",
    "dead_fraction",
    "direct_flops",
    "fold_batchnorm",
    "inference_macs",
    "init",
    "init_variables",
]
