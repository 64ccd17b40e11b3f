"""Import timm checkpoints (PyTorch layout, as read from `.safetensors`) into our Flax variables.

The mapping is explicit: every conv unit, residual projection and classifier of our tree is given its timm name
by the rules below, and the import fails, listing them, if any key is missing, left over or mis-shaped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from inception_jax import models

TIMM_MODELS = ("inception_v3", "inception_v4", "inception_resnet_v2")
_CLASSIFIER = {"inception_v3": "fc", "inception_v4": "last_linear", "inception_resnet_v2": "classif"}
_IGNORED_SUFFIXES = (".num_batches_tracked",)


class WeightImportError(ValueError):
    """The state dict does not fit the network: the message lists every missing, extra or mis-shaped key."""


# ---- our module path -> timm module prefix -------------------------------------------------------------------


def _branch_rule(local: str, branch_sizes: Mapping[int, int], pooled: frozenset[int]) -> str:
    """timm's v4 / IR-v2 naming inside a block: a one-conv branch is `branch{i}`, a longer one the nn.Sequential
    `branch{i}.{j}`; a branch that starts with a pool counts the pool as element 0. Inception-C's flat names
    (`branch1_0`, `branch1_1a`, ...) are kept as they are by the caller."""
    i, j = (int(s) for s in re.fullmatch(r"branch(\d)_(\d)", local).groups())
    if i in pooled:
        return f"branch{i}.{j + 1}"
    return f"branch{i}" if branch_sizes[i] == 1 else f"branch{i}.{j}"


def _v3_local(block: str, local: str) -> str:
    """torchvision's Inception-v3 names inside a block."""
    kind = {"5": "A", "6": "B", "7": "C"}[block[6]] if block[7] != "a" else {"6": "RA", "7": "RB"}[block[6]]
    tables = {
        "A": {"branch0_0": "branch1x1", "branch1_0": "branch5x5_1", "branch1_1": "branch5x5_2",
              "branch2_0": "branch3x3dbl_1", "branch2_1": "branch3x3dbl_2", "branch2_2": "branch3x3dbl_3",
              "branch3_0": "branch_pool"},
        "RA": {"branch0_0": "branch3x3", "branch1_0": "branch3x3dbl_1", "branch1_1": "branch3x3dbl_2",
               "branch1_2": "branch3x3dbl_3"},
        "B": {"branch0_0": "branch1x1", "branch3_0": "branch_pool",
              **{f"branch1_{j}": f"branch7x7_{j + 1}" for j in range(3)},
              **{f"branch2_{j}": f"branch7x7dbl_{j + 1}" for j in range(5)}},
        "RB": {**{f"branch0_{j}": f"branch3x3_{j + 1}" for j in range(2)},
               **{f"branch1_{j}": f"branch7x7x3_{j + 1}" for j in range(4)}},
        "C": {"branch0_0": "branch1x1", "branch1_0": "branch3x3_1", "branch1_1a": "branch3x3_2a",
              "branch1_1b": "branch3x3_2b", "branch2_0": "branch3x3dbl_1", "branch2_1": "branch3x3dbl_2",
              "branch2_2a": "branch3x3dbl_3a", "branch2_2b": "branch3x3dbl_3b", "branch3_0": "branch_pool"},
    }  # fmt: skip
    return tables[kind][local]


def _v3_prefix(path: tuple[str, ...], _: Mapping) -> str:
    top = path[0]
    if top == "Stem":
        return path[1]
    if top == "Logits":
        return "fc"
    if top == "AuxLogits":
        return ".".join(path)
    return f"{top}.{_v3_local(top, path[1])}"


_V4_STEM = {"Conv2d_1a_3x3": "features.0", "Conv2d_2a_3x3": "features.1", "Conv2d_2b_3x3": "features.2",
            "Mixed_3a_branch1_0": "features.3.conv", "Mixed_5a_branch0_0": "features.5.conv"}  # fmt: skip


def _v4_prefix(path: tuple[str, ...], layout: Mapping) -> str:
    top = path[0]
    if top == "Logits":
        return "last_linear"
    if top == "Stem":
        local = path[1]
        if local in _V4_STEM:
            return _V4_STEM[local]
        i, j = re.fullmatch(r"Mixed_4a_branch(\d)_(\d)", local).groups()
        return f"features.4.branch{i}.{j}"
    index = layout["feature_index"][top]
    local = path[1]
    if top.startswith("InceptionC") and local != "branch0_0" and not local.startswith("branch3"):
        return f"features.{index}.{local}"
    pooled = frozenset({3}) if top.startswith("Inception") else frozenset()
    return f"features.{index}.{_branch_rule(local, layout['branch_sizes'][top], pooled)}"


_IRV2_TOP = {"Mixed_5b": "mixed_5b", "ReductionA": "mixed_6a", "ReductionB": "mixed_7a", "BlockC_final": "block8",
             "Conv2d_7b_1x1": "conv2d_7b", "Logits": "classif"}  # fmt: skip
_IRV2_STACKS = {"BlockA": "repeat", "BlockB": "repeat_1", "BlockC": "repeat_2"}


def _irv2_prefix(path: tuple[str, ...], layout: Mapping) -> str:
    top = path[0]
    if top == "Stem":
        return {"Conv2d_1a_3x3": "conv2d_1a", "Conv2d_2a_3x3": "conv2d_2a", "Conv2d_2b_3x3": "conv2d_2b",
                "Conv2d_3b_1x1": "conv2d_3b", "Conv2d_4a_3x3": "conv2d_4a"}[path[1]]  # fmt: skip
    stack = re.fullmatch(r"(Block[ABC])_(\d+)", top)
    prefix = f"{_IRV2_STACKS[stack[1]]}.{stack[2]}" if stack else _IRV2_TOP[top]
    if len(path) == 1:
        return prefix
    if path[1] == "expand":
        return f"{prefix}.conv2d"
    pooled = frozenset({3}) if top == "Mixed_5b" else frozenset()
    return f"{prefix}.{_branch_rule(path[1], layout['branch_sizes'][top], pooled)}"


_PREFIX_RULES: dict[str, Callable[[tuple[str, ...], Mapping], str]] = {
    "inception_v3": _v3_prefix,
    "inception_v4": _v4_prefix,
    "inception_resnet_v2": _irv2_prefix,
}


_V4_ORDER = ("InceptionA", "ReductionA", "InceptionB", "ReductionB", "InceptionC")


def _layout(param_paths: list[tuple[str, ...]]) -> dict:
    """Facts the naming rules need that only the tree knows: convs per branch, and each v4 block's position in
    timm's single nn.Sequential (after the six stem modules)."""
    branch_sizes: dict[str, dict[int, int]] = {}
    for path in param_paths:
        match = re.fullmatch(r"branch(\d)_(\d)", path[1]) if len(path) > 1 else None
        if match and path[2] == "conv":
            sizes = branch_sizes.setdefault(path[0], {})
            sizes[int(match[1])] = sizes.get(int(match[1]), 0) + 1
    kind_and_index = lambda top: (_V4_ORDER.index(top.split("_")[0]), int(top.split("_")[1]) if "_" in top else 0)
    blocks = sorted({p[0] for p in param_paths if p[0].split("_")[0] in _V4_ORDER}, key=kind_and_index)
    return {"branch_sizes": branch_sizes, "feature_index": {name: 6 + i for i, name in enumerate(blocks)}}


# ---- tensors -------------------------------------------------------------------------------------------------


def _timm_tensor(collection: str, path: tuple[str, ...], prefix: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The timm key for one of our leaves and the transform from the PyTorch layout to ours."""
    leaf, module = path[-1], path[-2]
    to_hwio = lambda w: np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO
    same = lambda w: w
    if module == "conv":
        return f"{prefix}.conv.weight", to_hwio
    if module == "bn":
        name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
        return f"{prefix}.bn.{name}", same
    if leaf == "bias":
        return f"{prefix}.bias", same
    return f"{prefix}.weight", (lambda w: w.T) if collection == "dense" else to_hwio


def from_timm(timm_name: str, state_dict: Mapping[str, np.ndarray], **overrides) -> tuple[models.InceptionNet, dict]:
    """Builds our network for a timm model and fills it with the timm `state_dict` (key -> numpy array).

    `timm_name` is one of TIMM_MODELS (a pretrained tag after a dot, e.g. `inception_v4.tf_in1k`, is ignored).
    The class count and the presence of an auxiliary head are read from the state dict; BN gets a gamma
    (`bn_scale=True`) and Inception-v3 averages pools counting padded zeros, as torchvision's graph does.
    Returns (model, variables) with `model.apply(variables, x, train=False)` equal to timm's eval output.
    """
    base = timm_name.split(".")[0]
    if base not in TIMM_MODELS:
        raise ValueError(f"no importer for timm model {timm_name!r}; supported: {', '.join(TIMM_MODELS)}")
    classifier = _CLASSIFIER[base]
    if f"{classifier}.bias" not in state_dict:
        raise WeightImportError(
            f"state dict has no classifier {classifier!r}: is it a {base} checkpoint? First keys: "
            f"{sorted(state_dict)[:5]}"
        )
    config = dict(
        num_classes=int(np.shape(state_dict[f"{classifier}.bias"])[0]),
        aux_logits=any(k.startswith("AuxLogits.") for k in state_dict),
        bn_scale=True,
        avg_pool_include_padding=base == "inception_v3",
    )
    config.update(overrides)
    model = models.create(base, **config)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 299, 299, 3)), train=False))
    flat = traverse_util.flatten_dict(shapes)
    layout = _layout([path[1:] for path in flat if path[0] == "params"])
    rule = _PREFIX_RULES[base]

    converted, missing, misshaped, used = {}, [], [], set()
    for path, spec in flat.items():
        collection, module_path = path[0], path[1:]
        unit = module_path[:-2] if module_path[-2] in ("conv", "bn") else module_path[:-1]
        kind = "dense" if len(spec.shape) == 2 else "conv"
        key, transform = _timm_tensor(kind, module_path, rule(unit, layout))
        if key not in state_dict:
            missing.append(f"{key} (for {collection}/{'/'.join(module_path)})")
            continue
        used.add(key)
        value = transform(np.asarray(state_dict[key], dtype=np.float32))
        if value.shape != spec.shape:
            misshaped.append(f"{key}: got {tuple(np.shape(state_dict[key]))}, expected (as ours) {spec.shape}")
            continue
        converted[path] = jnp.asarray(value)
    extra = sorted(k for k in state_dict if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if missing or extra or misshaped:
        lines = [f"the state dict does not fit {base} ({config}):"]
        for title, items in (("missing", missing), ("unexpected", extra), ("wrong shape", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title}: " + "; ".join(items[:40]) + (" ..." if len(items) > 40 else ""))
        raise WeightImportError("\n".join(lines))
    return model, traverse_util.unflatten_dict(converted)
