"""Where a BatchNorm network's evaluation loses accuracy: one checkpoint evaluated with the raw and with the EMA
weights, each with its stored moving-average statistics, with statistics recalibrated over N training batches, and
with each test batch's own statistics; and, layer by layer, how far the stored statistics are from the recalibrated
ones (variance ratio, mean shift in standard deviations).

    python experiments/bn_statistics.py --workdir runs/pvr_small/inception_v3 --step 176 --batches 30 \
        --out experiments/results/bn_statistics/inception_v3_step176.json

Prints a table and writes the JSON (every layer's figures, in the order the network calls the layers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from inception_jax import cpu_settings, data
from inception_jax.accuracy import topk_counts
from inception_jax.models.layers import BatchNorm
from inception_jax.training import checkpoints, loop, sharding
from inception_jax.training.metrics import read_jsonl


def restore(workdir: Path, step: int | None) -> tuple[ml_collections.ConfigDict, loop.Experiment, Any, int]:
    """(config, experiment, train state, step) of a workdir's checkpoint (the latest when `step` is None)."""
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    config.mode = "evaluate"
    experiment = loop.Experiment(config)
    checkpointer = checkpoints.Checkpointer(str(workdir / "checkpoints"))
    if step is not None and step not in checkpointer.all_steps():
        raise SystemExit(f"error: no checkpoint of step {step} in {workdir}/checkpoints "
                         f"(there are {checkpointer.all_steps()})")
    state, meta = checkpointer.restore(experiment.abstract_state, step, move_damaged=False)
    checkpointer.close()
    return config, experiment, state, meta["step"]


def evaluate_with_batch_statistics(experiment: loop.Experiment, config: ml_collections.ConfigDict,
                                   variables: dict, batch_size: int) -> dict[str, float]:
    """top1, top5, loss over the eval split with every test batch normalised by its own statistics (BatchNorm in
    training mode, dropout off). Batches holding padding are left out (padding would enter the statistics);
    num_examples says how many examples counted."""
    model = experiment.model.clone(dropout_rate=0.0)

    @jax.jit
    def step(variables: dict, batch: dict) -> dict:
        logits, _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return {"loss": jnp.sum(loss), **topk_counts(logits, batch["label"], batch["mask"])}

    totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
    batches = data.make_iterator(config.dataset, split=experiment.info.eval_split, image_size=config.image_size,
                                 global_batch_size=batch_size, train=False, seed=config.seed,
                                 source=experiment.source)  # fmt: skip
    for batch in batches:
        if not np.all(batch["mask"] == 1):
            continue
        sums = jax.device_get(step(variables, sharding.global_batch(batch, experiment.mesh)))
        for key in totals:
            totals[key] += float(sums[key])
    count = totals.pop("count")
    return {**{k: v / count for k, v in totals.items()}, "num_examples": count}


def batchnorm_call_order(model: nn.Module, variables: dict, image_size: int) -> list[str]:
    """The paths ('Mixed_5b/branch1_0/bn') of the BatchNorm layers an evaluation-mode pass calls, in the order it
    calls them (traced, nothing computed; the aux head, off that path, is not among them)."""
    order = []

    def record(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        if isinstance(context.module, BatchNorm) and context.method_name == "__call__":
            order.append("/".join(context.module.scope.path))
        return next_fun(*args, **kwargs)

    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    return order


def layer(tree: dict, path: str) -> dict:
    """The {'mean', 'var'} of the layer at `path` ('Mixed_5b/branch1_0/bn') in a batch_stats tree."""
    for key in path.split("/"):
        tree = tree[key]
    return tree


def compare_statistics(stored: dict, recalibrated: dict, order: list[str]) -> list[dict[str, Any]]:
    """Per layer, in `order`: median and largest |log(stored var / recalibrated var)| over channels, and the largest
    mean shift |stored mean - recalibrated mean| / recalibrated standard deviation."""
    rows = []
    for path in order:
        s, r = layer(stored, path), layer(recalibrated, path)
        var_s, var_r = np.asarray(s["var"], np.float64), np.asarray(r["var"], np.float64)
        log_ratio = np.log((var_s + 1e-12) / (var_r + 1e-12))
        shift = np.abs(np.asarray(s["mean"]) - np.asarray(r["mean"])) / np.sqrt(var_r + 1e-3)
        rows.append({"layer": path, "median_log_var_ratio": float(np.median(log_ratio)),
                     "max_abs_log_var_ratio": float(np.max(np.abs(log_ratio))),
                     "max_mean_shift_sd": float(shift.max())})
    return rows


def recalibrated_up_to(experiment: loop.Experiment, config: ml_collections.ConfigDict, variables: dict,
                       recalibrated: dict, order: list[str]) -> list[dict[str, Any]]:
    """Top-1 error with the first k blocks' statistics recalibrated and the rest stored, for k = 0 .. all blocks in
    the network's order: where along the depth the stored statistics lose the accuracy (one bad block, or a loss
    compounding block after block)."""
    blocks = list(dict.fromkeys(path.split("/")[0] for path in order))
    rows = []
    for k in range(len(blocks) + 1):
        mixed = {**variables["batch_stats"], **{name: recalibrated["batch_stats"][name] for name in blocks[:k]}}
        result = loop.evaluate_variables(experiment, config, {**variables, "batch_stats": mixed})
        rows.append({"recalibrated_through": blocks[k - 1] if k else None, "top1_error": 100 * (1 - result["top1"]),
                     "loss": result["loss"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a training workdir")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--batches", type=int, default=30, help="training batches for the recalibration")
    parser.add_argument("--batch", type=int, default=40, help="test batch size for the batch-statistics evaluation")
    parser.add_argument("--by-block", action="store_true",
                        help="also evaluate with the first k blocks recalibrated, the rest stored, for every k")
    parser.add_argument("--out", type=Path, help="result JSON")
    args = parser.parse_args(argv)
    if not (args.workdir / "config.json").is_file():
        parser.error(f"{args.workdir} has no config.json: not a workdir of python -m inception_jax.main")
    if args.batches < 1 or args.batch < 1:
        parser.error("--batches and --batch must be >= 1")
    config, experiment, state, step = restore(args.workdir, args.step)
    train = [r for r in read_jsonl(str(args.workdir / "metrics.jsonl")) if r["split"] == "train" and r["step"] <= step]
    result: dict[str, Any] = {"workdir": str(args.workdir), "model": config.model.name, "step": step,
                              "recalibration_batches": args.batches, "bn_momentum": config.model.bn_momentum,
                              "train_accuracy": train[-1]["accuracy"] if train else None, "errors": {}, "layers": {}}
    order = batchnorm_call_order(experiment.model, state.variables(), config.image_size)
    for weights in ("raw", "ema"):
        variables = state.variables(ema=weights == "ema")
        config.bn_recalibration_batches = args.batches
        recalibrated_variables = loop.recalibrate_batchnorm(experiment, config, variables)
        config.bn_recalibration_batches = 0  # each evaluation below with the statistics it is given
        stored = loop.evaluate_variables(experiment, config, variables)
        recalibrated = loop.evaluate_variables(experiment, config, recalibrated_variables)
        batch_stats = evaluate_with_batch_statistics(experiment, config, variables, args.batch)
        result["errors"][weights] = {name: {"top1_error": 100 * (1 - r["top1"]), "top5_error": 100 * (1 - r["top5"]),
                                            "loss": r["loss"], "num_examples": r["num_examples"]}
                                     for name, r in (("stored", stored), ("recalibrated", recalibrated),
                                                     ("batch", batch_stats))}  # fmt: skip
        if args.by_block:
            result.setdefault("by_block", {})[weights] = recalibrated_up_to(experiment, config, variables,
                                                                             recalibrated_variables, order)
        result["layers"][weights] = compare_statistics(jax.device_get(variables["batch_stats"]),
                                                       jax.device_get(recalibrated_variables["batch_stats"]), order)
    print(f"{config.model.name} step {step} (train accuracy {result['train_accuracy']}), top-1 error % by the "
          f"statistics BatchNorm uses at evaluation:")
    print("| weights | stored moving averages | recalibrated over "
          f"{args.batches} train batches | each test batch's own |\n|---|---|---|---|")
    for weights, errors in result["errors"].items():
        print(f"| {weights} | " + " | ".join(f"{errors[k]['top1_error']:.2f}" for k in ("stored", "recalibrated",
                                                                                           "batch")) + " |")
    for weights, rows in result["layers"].items():
        worst = max(rows, key=lambda r: r["max_abs_log_var_ratio"])
        print(f"{weights}: {len(rows)} layers; largest |log(stored var / recalibrated var)| "
              f"{worst['max_abs_log_var_ratio']:.2f} ({worst['layer']}); median over layers of each layer's median "
              f"log ratio {np.median([r['median_log_var_ratio'] for r in rows]):.2f}")
    for weights, rows in result.get("by_block", {}).items():
        print(f"{weights}, top-1 error % with the blocks up to and including X recalibrated, the rest stored: "
              + ", ".join(f"{r['recalibrated_through'] or 'none'} {r['top1_error']:.1f}" for r in rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(cpu_settings.apply(sys.argv)[1:]))  # the CPU settings before jax starts its backends
