"""Import Keras applications' `InceptionV3` and `InceptionResNetV2` (ports of the TF-slim graphs, BatchNorm
without gamma) into our Flax variables.

Keras names its blocks (`mixed3`, `block35_4_mixed`, `block17_2_conv`) but not the convs inside them: those are
called `conv2d_57` in the order they were created, which shifts with anything built before them. So the mapping
reads Keras's functional graph, not its names: walking back from the final feature map, a concatenation is a block,
its inputs in order are the branches, a branch is the chain of conv units back to the block's input (the tensor all
the branches share), a nested concatenation is an expanded filter bank, and a residual block is Keras's scale layer
over the block input and a biased 1x1 conv. Flattened, that is the order in which our network calls its conv units
(recorded while tracing it): branches in order, units in order, the residual projection last. Each pair is checked
(kernel shape, strides, padding, BN or bias), and the residual scales and BatchNorm settings are read from the
Keras layers, so a graph that differs from ours fails with every difference listed instead of loading wrongly.
Names are used only to find the classifier (`predictions`).

Keras computes on the TensorFlow, JAX or PyTorch backend; the importer only reads the graph and the weights.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from inception_jax import models
from inception_jax.models.layers import ConvBN
from inception_jax.weights.timm import WeightImportError

# Our network name -> the Keras application (keras.applications.<name>).
KERAS_MODELS = {"inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2"}
_POOLS = ("MaxPooling2D", "AveragePooling2D")


@dataclasses.dataclass
class _Unit:
    """A Keras conv with the BatchNorm that follows it (None: a biased conv, the residual projection)."""

    conv: Any
    bn: Any = None


@dataclasses.dataclass
class _Block:
    """A Keras block: branches (lists of units, a pair of units for an expanded filter bank), and for a residual
    block its projection and scale."""

    branches: list[list[Any]]
    expand: _Unit | None = None
    scale: float | None = None
    activate: bool = True


# ---- the Keras graph -----------------------------------------------------------------------------------------


def _kind(layer: Any) -> str:
    return type(layer).__name__


def _producer(tensor: Any) -> Any:
    return tensor._keras_history.operation


def _inputs(layer: Any) -> list[Any]:
    if len(layer._inbound_nodes) != 1:
        raise WeightImportError(f"Keras layer {layer.name} is called {len(layer._inbound_nodes)} times; expected "
                                "a Keras application built once (keras.applications.InceptionV3/InceptionResNetV2)")
    return list(layer._inbound_nodes[0].input_tensors)


def _unit_before(tensor: Any) -> tuple[_Unit, Any]:
    """The conv unit producing `tensor` (through its activation and BatchNorm) and the unit's input."""
    layer = _producer(tensor)
    if _kind(layer) in ("Activation", "ReLU"):
        layer = _producer(_inputs(layer)[0])
    bn = None
    if _kind(layer) == "BatchNormalization":
        bn, layer = layer, _producer(_inputs(layer)[0])
    if _kind(layer) != "Conv2D":
        raise WeightImportError(f"expected a conv unit before Keras layer output {tensor.name}, found {layer.name} "
                                f"({_kind(layer)})")
    return _Unit(layer, bn), _inputs(layer)[0]


def _branch(tensor: Any, consumers: Counter) -> tuple[list[Any], Any]:
    """The units of the branch ending at `tensor`, first to last, and the block input it starts from (the first
    tensor back from `tensor` read by more than one layer)."""
    units: list[Any] = []
    while consumers[id(tensor)] == 1:
        layer = _producer(tensor)
        if _kind(layer) in _POOLS:
            tensor = _inputs(layer)[0]
        elif _kind(layer) == "Concatenate":  # an expanded filter bank: two units on one input, then its own unit
            (a, start_a), (b, start_b) = (_unit_before(t) for t in _inputs(layer))
            if start_a is not start_b:
                raise WeightImportError(f"Keras concatenation {layer.name} inside a branch does not join two convs "
                                        "of one input (an expanded filter bank)")
            units.append((a, b))
            unit, tensor = _unit_before(start_a)
            units.append(unit)
        else:
            unit, tensor = _unit_before(tensor)
            units.append(unit)
    return units[::-1], tensor


def _block(concat: Any, consumers: Counter) -> tuple[_Block, Any]:
    branches, starts = zip(*(_branch(t, consumers) for t in _inputs(concat)), strict=True)
    if any(s is not starts[0] for s in starts):
        raise WeightImportError(f"the branches of Keras block {concat.name} do not start from one tensor")
    return _Block(list(branches)), starts[0]


def _residual_block(add: Any, consumers: Counter, activate: bool) -> tuple[_Block, Any]:
    shortcut, residual = _inputs(add)
    expand = _producer(residual)
    if _kind(expand) != "Conv2D" or not expand.use_bias:
        raise WeightImportError(f"Keras residual layer {add.name} does not add a biased 1x1 conv ({expand.name})")
    block, start = _block(_producer(_inputs(expand)[0]), consumers)
    if start is not shortcut:
        raise WeightImportError(f"the branches of Keras block {add.name} do not start from its shortcut")
    scale = getattr(add, "scale", None)
    if scale is None:
        raise WeightImportError(f"Keras layer {add.name} ({_kind(add)}) has no residual scale")
    return dataclasses.replace(block, expand=_Unit(expand), scale=float(scale), activate=activate), start


def _keras_program(keras_model: Any) -> tuple[list[_Unit | _Block], Any]:
    """The Keras network as our units and blocks, input to output, and its classifier layer (or None)."""
    consumers = Counter(id(t) for layer in keras_model.layers for node in layer._inbound_nodes
                        for t in node.input_tensors)  # fmt: skip
    tensor, classifier = keras_model.outputs[0], None
    layer = _producer(tensor)
    if _kind(layer) == "Dense":
        classifier, tensor = layer, _inputs(layer)[0]
        layer = _producer(tensor)
    if _kind(layer) in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        if classifier is not None and _kind(layer) != "GlobalAveragePooling2D":
            raise WeightImportError(f"Keras classifier pools with {layer.name}; ours averages")
        tensor = _inputs(layer)[0]
    items: list[_Unit | _Block] = []
    while _kind(_producer(tensor)) != "InputLayer":
        layer = _producer(tensor)
        kind = _kind(layer)
        if kind in _POOLS:
            tensor = _inputs(layer)[0]
        elif kind == "Concatenate":
            block, tensor = _block(layer, consumers)
            items.append(block)
        elif len(_inputs(layer)) == 2:  # a residual block without activation (Inception-ResNet-v2's last)
            block, tensor = _residual_block(layer, consumers, activate=False)
            items.append(block)
        elif kind in ("Activation", "ReLU") and len(_inputs(_producer(_inputs(layer)[0]))) == 2:
            block, tensor = _residual_block(_producer(_inputs(layer)[0]), consumers, activate=True)
            items.append(block)
        else:
            unit, tensor = _unit_before(tensor)
            items.append(unit)
    return items[::-1], classifier


def _flatten(items: list[_Unit | _Block]) -> list[_Unit]:
    """The units in our call order: branches in order, units in order, a bank's two convs, the projection last."""
    units: list[_Unit] = []
    for item in items:
        if isinstance(item, _Unit):
            units.append(item)
            continue
        for branch in item.branches:
            for unit in branch:
                units.extend(unit if isinstance(unit, tuple) else (unit,))
        if item.expand is not None:
            units.append(item.expand)
    return units


# ---- our network ---------------------------------------------------------------------------------------------


def _our_units(model: models.InceptionNet) -> tuple[list[tuple[tuple[str, ...], nn.Module]], dict]:
    """Our conv units in call order ((path, module): ConvBN units and the bare convs of the residual projections)
    and the variables' shapes, from one abstract trace."""
    units: list[tuple[tuple[str, ...], nn.Module]] = []

    def record(next_fun: Any, args: tuple, kwargs: dict, context: Any) -> Any:
        module = context.module
        if context.method_name == "__call__" and (
            isinstance(module, ConvBN) or (isinstance(module, nn.Conv) and not isinstance(module.parent, ConvBN))
        ):
            units.append((tuple(module.scope.path), module))
        return next_fun(*args, **kwargs)

    x = jnp.zeros((1, 299, 299, 3), jnp.float32)
    with nn.intercept_methods(record):
        shapes = jax.eval_shape(lambda: model.clone(ops="reference").init(jax.random.key(0), x, train=False))
    return units, shapes


def _conv_signature(module: nn.Module) -> tuple:
    """(kernel size, strides, padding) of one of our units (a ConvBN or an nn.Conv), in Keras's terms."""
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    padding = module.padding.lower() if isinstance(module.padding, str) else module.padding
    return pair(module.kernel_size), pair(module.strides or 1), padding


def _keras_signature(conv: Any) -> tuple:
    return tuple(conv.kernel_size), tuple(conv.strides), conv.padding


def _weights(layer: Any) -> dict[str, np.ndarray]:
    return {w.name: np.asarray(w.numpy(), dtype=np.float32) for w in layer.weights}


# ---- the import ----------------------------------------------------------------------------------------------


def _network_name(keras_model: Any) -> str:
    if keras_model.name in KERAS_MODELS:
        return keras_model.name
    raise ValueError(f"Keras model {keras_model.name!r} is not one of {', '.join(KERAS_MODELS)} (Keras applications "
                     "name them so); pass name=... if it is one of them under another name")


def _model_config(name: str, items: list[_Unit | _Block], classifier: Any) -> dict[str, Any]:
    """Our network's fields read from the Keras graph: classes, BatchNorm settings, residual scales."""
    bns = [u.bn for u in _flatten(items) if u.bn is not None]
    settings = {(bool(bn.scale), bool(bn.center), float(bn.epsilon)) for bn in bns}
    if len(settings) != 1 or not next(iter(settings))[1]:
        raise WeightImportError(f"Keras BatchNorm layers differ or lack a beta: (scale, center, epsilon) = {settings}")
    scale, _, epsilon = settings.pop()
    config: dict[str, Any] = dict(bn_scale=scale, bn_epsilon=epsilon, aux_logits=False,
                                  avg_pool_include_padding=False, include_top=classifier is not None)  # fmt: skip
    if classifier is not None:
        config["num_classes"] = int(classifier.units)
    if name == "inception_resnet_v2":
        stages: list[list[_Block]] = [[]]  # runs of residual blocks, split by the reductions
        for item in items:
            if isinstance(item, _Block) and item.scale is not None:
                stages[-1].append(item)
            elif stages[-1]:
                stages.append([])
        stages = [s for s in stages if s]
        if len(stages) != 3 or stages[2][-1].activate or stages[2][-1].scale != 1.0:
            raise WeightImportError(f"expected Keras's three residual stages, the last ending in a linear block of "
                                    f"scale 1.0; found stages of {[len(s) for s in stages]} blocks")
        scales = [{b.scale for b in stage} for stage in (stages[0], stages[1], stages[2][:-1])]
        if any(len(s) != 1 for s in scales):
            raise WeightImportError(f"Keras's residual scales vary within a stage: {scales}")
        config["residual_scales"] = tuple(s.pop() for s in scales)
        config["num_blocks"] = tuple(len(s) for s in stages)
    return config


def from_keras(keras_model: Any, name: str | None = None, **overrides: Any) -> tuple[models.InceptionNet, dict]:
    """Builds our network for a Keras application model and fills it with its weights.

    `keras_model` is `keras.applications.InceptionV3(...)` or `InceptionResNetV2(...)`, with or without the top
    (`include_top=False`: ours then returns the final feature map, as Keras with `pooling=None` does). `name` is
    our network name (read from the Keras model's name by default). Ours returns logits: Keras's default
    `classifier_activation="softmax"` is applied after them. Returns (model, variables) with
    `model.apply(variables, x, train=False)` equal to Keras's inference output on inputs in [-1, 1]
    (`keras.applications.inception_v3.preprocess_input`).
    """
    name = name or _network_name(keras_model)
    if name not in KERAS_MODELS:
        raise ValueError(f"no Keras importer for {name!r}; supported: {', '.join(KERAS_MODELS)}")
    items, classifier = _keras_program(keras_model)
    config = _model_config(name, items, classifier)
    config.update(overrides)
    model = models.create(name, **config)
    ours, shapes = _our_units(model)
    theirs = _flatten(items)
    flat_shapes = traverse_util.flatten_dict(shapes)

    converted: dict[tuple[str, ...], jax.Array] = {}
    problems: list[str] = []
    used: set[int] = set()

    def put(path: tuple[str, ...], value: np.ndarray, source: str) -> None:
        expected = flat_shapes.get(path)
        if expected is None:
            problems.append(f"{source}: ours has no {'/'.join(path)}")
        elif value.shape != expected.shape:
            problems.append(f"{source}: got {value.shape}, expected (as ours {'/'.join(path)}) {expected.shape}")
        else:
            converted[path] = jnp.asarray(value)

    for (path, module), unit in zip(ours, theirs, strict=False):
        label = f"{'/'.join(path)} <- {unit.conv.name}"
        if isinstance(module, ConvBN) != (unit.bn is not None):
            problems.append(f"{label}: one has BatchNorm, the other not")
            continue
        if _conv_signature(module) != _keras_signature(unit.conv):
            problems.append(f"{label}: (kernel, strides, padding) {_conv_signature(module)} vs Keras "
                            f"{_keras_signature(unit.conv)}")
            continue
        used.add(id(unit.conv))
        conv = _weights(unit.conv)
        if isinstance(module, ConvBN):
            put(("params", *path, "conv", "kernel"), conv["kernel"], unit.conv.name)
            used.add(id(unit.bn))
            bn = _weights(unit.bn)
            put(("params", *path, "bn", "bias"), bn["beta"], f"{unit.bn.name}/beta")
            if "gamma" in bn:
                put(("params", *path, "bn", "scale"), bn["gamma"], f"{unit.bn.name}/gamma")
            put(("batch_stats", *path, "bn", "mean"), bn["moving_mean"], f"{unit.bn.name}/moving_mean")
            put(("batch_stats", *path, "bn", "var"), bn["moving_variance"], f"{unit.bn.name}/moving_variance")
        else:
            put(("params", *path, "kernel"), conv["kernel"], unit.conv.name)
            put(("params", *path, "bias"), conv["bias"], f"{unit.conv.name}/bias")
    problems += [f"ours {'/'.join(path)}: no Keras conv left for it" for path, _ in ours[len(theirs):]]
    problems += [f"Keras {unit.conv.name}: no unit of ours left for it" for unit in theirs[len(ours):]]
    if classifier is not None:
        used.add(id(classifier))
        dense = _weights(classifier)
        put(("params", "Logits", "kernel"), dense["kernel"], classifier.name)
        put(("params", "Logits", "bias"), dense["bias"], f"{classifier.name}/bias")
    problems += [f"Keras {layer.name} ({_kind(layer)}): weights not mapped" for layer in keras_model.layers
                 if layer.weights and id(layer) not in used]  # fmt: skip
    problems += [f"ours {'/'.join(path)}: no Keras weight for it" for path in flat_shapes if path not in converted
                 and not problems]  # fmt: skip
    if problems:
        lines = [f"the Keras model does not fit {name} ({config}): {len(problems)} problems"]
        lines += [f"  {p}" for p in problems]
        raise WeightImportError("\n".join(lines))
    return model, traverse_util.unflatten_dict(converted)


def load_keras_model(name: str, path: str | Path) -> Any:
    """The Keras application `name` (ours: inception_v3 / inception_resnet_v2) with the weights of a `.keras` model
    file or a `.weights.h5` weights file (`model.save_weights`); the top, and its class count, as the file holds."""
    import keras

    path = Path(path)
    if name not in KERAS_MODELS:
        raise ValueError(f"no Keras importer for {name!r}; supported: {', '.join(KERAS_MODELS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".keras":
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    if not path.name.endswith(".h5"):
        raise ValueError(f"{path}: expected a .keras model file or a .weights.h5 / .h5 weights file")
    classes = _h5_classes(path)
    application = getattr(keras.applications, KERAS_MODELS[name])
    model = application(weights=None, include_top=classes is not None, classes=classes or 1000,
                        classifier_activation=None)  # fmt: skip
    model.load_weights(path)
    return model


def _h5_classes(path: Path) -> int | None:
    """The class count of the classifier a Keras weights file holds (None: saved without the top). Keras 3's
    `.weights.h5` files name a layer's group by its class (`layers/dense`), Keras 2's `.h5` by the layer's name
    (`predictions`); either way it is the only dense layer of these networks, and its bias is its only 1-D array."""
    import h5py

    found: list[int] = []

    def visit(key: str, item: Any) -> None:
        dense = any(part == "predictions" or part.startswith("dense") for part in key.split("/"))
        if dense and isinstance(item, h5py.Dataset) and item.ndim == 1:
            found.append(int(item.shape[0]))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found[0] if found else None
