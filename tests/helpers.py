"""What several test modules share: paths, the tests' training config, config and script loaders, the environment
of a subprocess with another device count, and the relative errors the parity tests assert on."""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import ml_collections
import numpy as np

from inception_jax.training.config import load_config_file

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "tests" / "tiny_config.py")
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def tiny_config(**overrides: Any) -> ml_collections.ConfigDict:
    """tests/tiny_config.py in train mode, with dotted-key overrides (`**{"model.name": ...}`)."""
    config = load_config_file(TINY_CONFIG)
    config.mode = "train"
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return config


def project_config(name: str) -> ml_collections.ConfigDict:
    """configs/<name>.py."""
    return load_config_file(str(ROOT / "configs" / f"{name}.py"))


def load_script(name: str) -> ModuleType:
    """experiments/<name>.py as a module (the scripts are run by path, not installed; their shared helpers, such as
    experiments/launch.py, are imported from beside them)."""
    if str(ROOT / "experiments") not in sys.path:
        sys.path.append(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_with_devices(count: int | None) -> dict[str, str]:
    """This process's environment for a subprocess with `count` simulated CPU devices (None: the default one).
    One device compiles fastest: the tests that are not about sharding run their subprocesses so."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    if count is not None:
        flags.append(f"{DEVICE_COUNT_FLAG}={count}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags))


def one_device_mesh() -> jax.sharding.Mesh:
    """The mesh of the tests that are not about sharding: one device compiles fastest."""
    from inception_jax.training import sharding

    return sharding.make_mesh(jax.devices()[:1])


def relative_error(a: Any, reference: Any) -> float:
    """max |a - reference| / max |reference| of one array (numpy on the host: nothing compiles per shape)."""
    a, reference = np.asarray(a, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(a - reference)) / np.max(np.abs(reference)))


def tree_relative_error(tree: Any, reference: Any) -> float:
    """The largest absolute difference over all leaves, over the largest absolute reference value of all leaves:
    errors measured against the scale of the whole network."""
    leaves, ref_leaves = (jax.tree.leaves(jax.device_get(t)) for t in (tree, reference))
    difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(leaves, ref_leaves, strict=True))
    return difference / max(float(np.max(np.abs(b))) for b in ref_leaves)


def max_leaf_relative_error(tree: Any, reference: Any) -> float:
    """The largest `relative_error` of any one leaf against the same leaf of `reference` (each leaf against its
    own scale; a zero leaf counts against 1e-12)."""
    leaves, ref_leaves = (jax.tree.leaves(jax.device_get(t)) for t in (tree, reference))
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b))) + 1e-12))
               for a, b in zip(leaves, ref_leaves, strict=True))
