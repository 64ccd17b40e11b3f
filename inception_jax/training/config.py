"""Every training config key with its default (the paper's recipe), and the checks that turn a bad config into a
message naming the field before anything is compiled. The files in `configs/` start from `default_config()`."""

from __future__ import annotations

import dataclasses

import ml_collections

from inception_jax import data, models
from inception_jax.training import optim, sharding

MODES = ("train", "train_and_evaluate", "evaluate")
BN_STATISTICS = ("global", "per_device")
EVAL_CHECKPOINTS = ("latest", "best")
NAN_POLICIES = ("stop", "skip")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """The config that the file at `path` (a configs/*.py module) returns from `get_config()`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# The network fields every config holds; their defaults are the networks' (model_defaults).
MODEL_FIELDS = ("aux_logits", "dropout_rate", "depth_multiplier", "min_depth", "bn_momentum", "bn_epsilon", "bn_scale",
                "dtype", "remat", "ops")  # fmt: skip


def model_defaults() -> dict[str, object]:
    """The defaults of MODEL_FIELDS as the networks state them, the compute dtype as its name."""
    defaults = {f.name: f.default for f in dataclasses.fields(models.InceptionNet) if f.name in MODEL_FIELDS}
    defaults["dtype"] = next(name for name, dtype in models.DTYPES.items() if dtype == defaults["dtype"])
    return defaults


def default_config() -> ml_collections.ConfigDict:
    """The paper's recipe (its §3.4; README, Train) for Inception-v3 on ImageNet at 299x299; experiments override
    fields."""
    c = ml_collections.ConfigDict()
    c.mode = "train_and_evaluate"

    # Network fields (models.create), with the networks' own defaults (models.InceptionNet documents each) except
    # for the aux head, which the paper's recipe trains with; an experiment may add residual_scales, variant,
    # num_blocks, ...
    c.model = ml_collections.ConfigDict({"name": "inception_v3", **model_defaults(), "aux_logits": True})

    c.dataset = data.default_dataset_config()
    c.dataset.name = "imagenet2012"
    c.image_size = 299

    # Global, over all devices and hosts. The paper trained asynchronously (replicas of 32 images, v3: 50 of them);
    # a synchronous 256 with the paper's lr is our default. Larger batches: lr_scaling="linear" from
    # lr_base_batch_size and a few warmup_epochs.
    c.batch_size = 256
    c.eval_batch_size = 0  # 0 = batch_size
    c.num_epochs = 160.0  # the paper gives no epoch count
    c.num_train_steps = -1  # > 0 overrides num_epochs

    # TF1 RMSProp (optim.tf1_rmsprop), or "momentum" (SGD with momentum, the paper's earlier experiments).
    c.optimizer = "rmsprop"
    c.learning_rate = 0.045
    c.lr_decay_factor = 0.94  # staircase: lr * factor ** floor(epoch / lr_decay_epochs)
    c.lr_decay_epochs = 2.0
    c.warmup_epochs = 0.0  # linear warm-up from 0; large synchronous batches need a few epochs
    c.lr_scaling = "none"  # none | linear | sqrt in batch_size / lr_base_batch_size
    c.lr_base_batch_size = 256
    c.momentum = 0.9
    c.rmsprop_decay = 0.9
    c.rmsprop_epsilon = 1.0
    c.weight_decay = 4e-5  # coupled L2 on conv/dense kernels, never BN
    c.weight_decay_biases = False  # also decay conv/dense biases (TF-slim's Inception-ResNet-v2 scope does)
    c.grad_clip_norm = 2.0  # global norm; 0 = off
    c.label_smoothing = 0.1
    c.aux_loss_weight = 0.4
    c.ema_decay = 0.9999  # of weights and BN statistics, TF's warm-up min(decay, (1+t)/(10+t)); 0 = off
    c.eval_with_ema = True
    # > 0: before each evaluation, every BatchNorm layer's statistics recomputed as the exact mean over this many
    # training batches (eval preprocessing, the evaluated weights frozen; training.bn_recalibration), for that
    # evaluation only. 0: the moving averages, as the paper's recipe evaluates; its long runs leave them little lag.
    c.bn_recalibration_batches = 0

    # "global": BN statistics over the whole global batch (a step is the same on any device count).
    # "per_device": each device's rows normalised on their own, as TF's replicas did; no BN collectives.
    c.bn_statistics = "global"
    c.fsdp = False  # shard weights and optimiser state over the devices too (large models / batches)
    c.fsdp_min_size = sharding.FSDP_MIN_SIZE  # arrays with fewer elements stay replicated under FSDP

    c.seed = 0
    c.log_every_steps = 100
    c.eval_every_steps = 10_000  # 0 = evaluate at the end only (train_and_evaluate)
    c.checkpoint_every_steps = 5_000  # and always at the end, on preemption and after every evaluation
    c.keep_checkpoints = 3  # the last K, plus the best by eval top-1
    c.eval_checkpoint = "latest"  # mode=evaluate: latest | best

    # Faults (docs/faults.md). A step with a non-finite loss or gradient norm never changes the state; "stop" ends
    # the run there (exit code 3, no checkpoint written after it), "skip" goes on and stops after nan_max_skips such
    # steps in a row.
    c.nan_policy = "stop"
    c.nan_max_skips = 10
    # Resume even though a structural field (model, classes, optimizer, ...) differs from the workdir's config.json;
    # the checkpoint's arrays must still fit the new state.
    c.allow_config_change = False
    return c


def _check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str,
                open_sections: tuple[str, ...] = ()) -> None:
    for key in config:
        name = f"{prefix}{key}"
        if key not in reference:
            if prefix.rstrip(".") in open_sections:
                continue
            raise ValueError(f"config field {name} is unknown; known fields: {', '.join(sorted(reference))}")
        if isinstance(reference[key], ml_collections.ConfigDict) and key != "num_examples":
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise ValueError(f"config field {name} must be a section, got {config[key]!r}")
            _check_keys(config[key], reference[key], f"{name}.", open_sections)


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """num_train_steps when > 0, else num_epochs worth of steps."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return max(1, round(config.num_epochs * steps_per_epoch))


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    return int(config.eval_batch_size or config.batch_size)


def validate(config: ml_collections.ConfigDict, *, device_count: int, process_count: int = 1) -> data.Source:
    """Raises ValueError naming the first bad field; returns the data set, opened (its `info` says what it holds),
    for the run to read from: a run opens its data set once. Cheap: the fields are checked before the data set is
    opened, no example is read and nothing is compiled. (Model fields are checked by `state.create_model`.)"""
    _check_keys(config, default_config(), "", open_sections=("model",))

    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise ValueError(f"config field {field} {why}, got {config[field]!r}")

    need(config.mode in MODES, "mode", f"must be one of {MODES}")
    try:
        models.check_name(config.model.name)
    except ValueError as error:
        raise ValueError(f"config field model.name: {error}") from None
    need(isinstance(config.image_size, int) and config.image_size >= models.MIN_INPUT_SIZE, "image_size",
         f"must be an int >= {models.MIN_INPUT_SIZE}")
    for field, size in (("batch_size", config.batch_size), ("eval_batch_size", eval_batch_size(config))):
        need(isinstance(size, int) and size > 0, field, "must be a positive int")
        need(size % device_count == 0, field, f"must be divisible by the device count ({device_count})")
        need(size % process_count == 0, field, f"must be divisible by the process count ({process_count})")
    need(config.learning_rate > 0, "learning_rate", "must be > 0")
    need(config.num_train_steps > 0 or config.num_epochs > 0, "num_epochs", "must be > 0 when num_train_steps <= 0")
    need(config.optimizer in optim.OPTIMIZERS, "optimizer", f"must be one of {optim.OPTIMIZERS}")
    need(config.lr_scaling in optim.LR_SCALINGS, "lr_scaling", f"must be one of {optim.LR_SCALINGS}")
    need(config.lr_base_batch_size > 0, "lr_base_batch_size", "must be > 0")
    need(0 < config.lr_decay_factor <= 1, "lr_decay_factor", "must be in (0, 1]")
    need(config.lr_decay_epochs > 0, "lr_decay_epochs", "must be > 0")
    need(config.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
    need(0 <= config.momentum < 1, "momentum", "must be in [0, 1)")
    need(0 < config.rmsprop_decay < 1, "rmsprop_decay", "must be in (0, 1)")
    need(config.rmsprop_epsilon > 0, "rmsprop_epsilon", "must be > 0")
    need(config.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(config.grad_clip_norm >= 0, "grad_clip_norm", "must be >= 0 (0 = no clipping)")
    need(0 <= config.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
    need(config.aux_loss_weight >= 0, "aux_loss_weight", "must be >= 0")
    need(0 <= config.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 = no moving average)")
    need(config.bn_statistics in BN_STATISTICS, "bn_statistics", f"must be one of {BN_STATISTICS}")
    recalibration = config.get("bn_recalibration_batches", 0)  # absent from configs saved before it existed
    need(isinstance(recalibration, int) and recalibration >= 0,
         "bn_recalibration_batches", "must be an int >= 0 (0 = evaluate with the moving averages)")
    need(config.fsdp_min_size >= 0, "fsdp_min_size", "must be >= 0")
    need(config.log_every_steps > 0, "log_every_steps", "must be > 0")
    need(config.eval_every_steps >= 0, "eval_every_steps", "must be >= 0 (0 = at the end only)")
    need(config.checkpoint_every_steps >= 0, "checkpoint_every_steps", "must be >= 0 (0 = at the end only)")
    need(config.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
    need(config.eval_checkpoint in EVAL_CHECKPOINTS, "eval_checkpoint", f"must be one of {EVAL_CHECKPOINTS}")
    need(isinstance(config.seed, int) and config.seed >= 0, "seed", "must be a non-negative int")
    need(config.nan_policy in NAN_POLICIES, "nan_policy", f"must be one of {NAN_POLICIES}")
    need(isinstance(config.nan_max_skips, int) and config.nan_max_skips >= 1, "nan_max_skips", "must be an int >= 1")
    try:
        source = data.open_source(config.dataset)
    except data.BadImageError:  # names the files, which is what matters
        raise
    except Exception as error:  # the data package's own errors name the problem; say which field led there
        raise ValueError(f"config field dataset.name ({config.dataset.name!r}): {error}") from error
    info = source.info
    train_examples = info.num_examples.get(info.train_split, 0)
    if config.mode != "evaluate" or recalibration:
        need(train_examples >= config.batch_size, "batch_size",
             f"must be at most the {train_examples} examples of {info.name}:{info.train_split}")
    return source


# --- the workdir's config on resume ----------------------------------------------------------------------------------

# Fields that change the training state's structure or what its numbers mean: a checkpoint written under one value
# cannot be continued under another. Every model field not in SAFE_MODEL_FIELDS counts too (the model section is
# open: a network may add fields, and an unknown one is taken as structural).
STRUCTURAL_FIELDS = ("dataset.name", "dataset.num_classes", "optimizer")
# (field, what it means) for fields whose on/off switch changes the state (the optimiser chain, the moving average)
# but whose value may change.
SWITCH_FIELDS = {"grad_clip_norm": "gradient clipping", "weight_decay": "weight decay", "ema_decay": "EMA"}
SAFE_MODEL_FIELDS = ("dtype", "remat", "ops", "dropout_rate", "bn_momentum", "bn_epsilon", "residual_scales")
# Fields that say what this invocation does rather than what the run is.
IGNORED_FIELDS = ("mode", "eval_checkpoint", "allow_config_change")


class ConfigChangeError(ValueError):
    """A resumed workdir's checkpoints were written under a structurally different config."""


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "num_examples":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _json_fields(config: ml_collections.ConfigDict) -> dict[str, object]:
    """The config as config.json holds it (tuples as lists), flattened to dotted names."""
    import json

    return _flatten(json.loads(config.to_json_best_effort()))


def _show(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(structural, safe) differences between a workdir's saved config.json (as a dict) and `config`, each as
    "field old -> new"; a field on one side only counts as changed from/to "unset"."""
    old, new = _flatten(saved), _json_fields(config)
    structural, safe = [], []
    for field in sorted(set(old) | set(new)):
        before, after = old.get(field, "unset"), new.get(field, "unset")
        if before == after or field in IGNORED_FIELDS:
            continue
        change = f"{field} {_show(before)} -> {_show(after)}"
        if field in SWITCH_FIELDS:
            switched = [bool(v) if isinstance(v, int | float) else v for v in (before, after)]
            if switched[0] != switched[1]:
                structural.append(f"{change} ({SWITCH_FIELDS[field]} on/off)")
                continue
        model_field = field.startswith("model.") and field[len("model."):] not in SAFE_MODEL_FIELDS
        (structural if model_field or field in STRUCTURAL_FIELDS else safe).append(change)
    return structural, safe
