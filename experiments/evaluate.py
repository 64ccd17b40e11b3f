"""Evaluate checkpoints or imported weights with 1, 12 or 144 crops, alone or as an ensemble (softmax averaged).

    python experiments/evaluate.py --workdir runs/quickstart --crops 1,12,144
    python experiments/evaluate.py --weights weights/inception_v4 --dataset imagenet2012 --crops 144
    python experiments/evaluate.py --weights weights/inception_v4 --workdir runs/irv2_a --workdir runs/irv2_b \
        --workdir runs/irv2_c --crops 144 --out results/ensemble.json

Training checkpoints are read with their EMA weights (the paper's evaluation) unless --no-ema, from the latest or
the best (--checkpoint best) step; --bn-recalibration N recomputes their BatchNorm statistics over N of the run's
training batches first (for this evaluation only; the checkpoint is not changed). Each crop setting writes one
result JSON: next to the checkpoint (`<workdir>/eval_<dataset>_<split>_<crops>crop.json`) for a single member, to
--out (with `_<crops>crop` added when several settings run) otherwise. The error is exact over the whole split, on
any number of devices.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ml_collections

from inception_jax import cpu_settings, data, weights
from inception_jax.evaluation import multicrop
from inception_jax.training import loop, sharding

CROPS = (1, 12, 144)


def load_workdir(workdir: Path, which: str, ema: bool,
                 recalibration_batches: int = 0) -> tuple[multicrop.Member, ml_collections.ConfigDict, int]:
    """(model, variables), the run's config and the checkpoint step of a training workdir; with
    `recalibration_batches` > 0 the variables' BatchNorm statistics recalibrated over that many training batches."""
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{workdir} has no config.json: not a workdir of python -m inception_jax.main")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    experiment = loop.Experiment(config)
    variables, step = loop.restore_variables(experiment, str(workdir), which, ema=ema and config.ema_decay > 0)
    if recalibration_batches:
        config.bn_recalibration_batches = recalibration_batches
        variables = loop.recalibrate_batchnorm(experiment, config, variables)
    return (experiment.model, variables), config, step


def parse_crops(text: str) -> list[int]:
    crops = [int(c) for c in text.split(",") if c.strip()] if text.replace(",", "").isdigit() else []
    if not crops or any(c not in CROPS for c in crops):
        raise argparse.ArgumentTypeError(f"--crops must be a comma-separated subset of {CROPS}, got {text!r}")
    return crops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, action="append", default=[], help="training workdir (repeatable)")
    parser.add_argument("--weights", type=Path, action="append", default=[],
                        help="directory from python -m inception_jax.weights (repeatable)")  # fmt: skip
    parser.add_argument("--crops", type=parse_crops, default=[1])
    parser.add_argument("--dataset", help="data set name (default: the first workdir's)")
    parser.add_argument("--data-dir", help="tfds data_dir (default: the first workdir's)")
    parser.add_argument("--split", help="split (default: the data set's eval split)")
    parser.add_argument("--preprocessing", choices=("inception", "simple", "auto"),
                        help="eval preprocessing (12 and 144 crops need inception; default: the run's)")  # fmt: skip
    parser.add_argument("--image-size", type=int, help="default: the first workdir's, else 299")
    parser.add_argument("--batch", type=int, default=8, help="images per step (all crops of each go through)")
    parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    parser.add_argument("--no-ema", action="store_true", help="raw weights instead of their moving average")
    parser.add_argument("--bn-recalibration", type=int, default=0, metavar="N",
                        help="recompute each workdir's BatchNorm statistics over N of its training batches first")
    parser.add_argument("--out", type=Path, help="result JSON (required for an ensemble)")
    args = parser.parse_args(argv)
    if not args.workdir and not args.weights:
        parser.error("give at least one --workdir or --weights")
    if len(args.workdir) + len(args.weights) > 1 and not args.out:
        parser.error("an ensemble needs --out for its result JSON")
    if not args.workdir and not args.dataset:
        parser.error("--weights alone needs --dataset (and --data-dir for tfds data sets)")
    if args.bn_recalibration < 0 or (args.bn_recalibration and args.weights):
        parser.error("--bn-recalibration must be >= 0, and needs training workdirs only (their config names the "
                     "training data and batch size); leave out --weights or the recalibration")
    mesh = sharding.make_mesh()
    if args.batch < 1 or args.batch % mesh.devices.size:
        parser.error(f"--batch must be a positive multiple of the device count {mesh.devices.size}")

    members, names, sources, steps = [], [], [], []
    dataset_config, image_size = data.default_dataset_config(), args.image_size
    for workdir in args.workdir:
        member, config, step = load_workdir(workdir, args.checkpoint, ema=not args.no_ema,
                                            recalibration_batches=args.bn_recalibration)
        if len(members) == 0:
            dataset_config, image_size = config.dataset, image_size or config.image_size
        members.append(member)
        names.append(config.model.name)
        sources.append(str(workdir))
        steps.append(step)
    for directory in args.weights:
        members.append(weights.load(directory))
        names.append(json.loads((directory / weights.store.MODEL_FILE).read_text())["name"])
        sources.append(str(directory))
    image_size = image_size or 299
    if args.dataset:
        dataset_config.name = args.dataset
    if args.preprocessing:
        dataset_config.preprocessing = args.preprocessing
    if args.data_dir:
        dataset_config.data_dir = args.data_dir
    source = data.open_source(dataset_config)  # once, for every crop setting
    info = source.info
    split = args.split or info.eval_split
    if split not in info.num_examples:
        parser.error(f"--split {split!r}: {info.name} has {sorted(info.num_examples)}")
    classes = {m.num_classes for m, _ in members}
    if classes != {info.num_classes}:
        parser.error(f"the models have {sorted(classes)} classes but {info.name} has {info.num_classes}")

    for crops in args.crops:
        start = time.time()
        batches = data.make_iterator(dataset_config, split=split, image_size=image_size, global_batch_size=args.batch,
                                     train=False, seed=0, num_crops=crops, source=source)  # fmt: skip
        result = multicrop.evaluate(members, batches, mesh)
        result.update(
            crops=crops, dataset=info.name, split=split, image_size=image_size, sources=sources,
            weights="raw" if args.no_ema else "ema", checkpoint=args.checkpoint if args.workdir else None,
            steps=steps, bn_recalibration_batches=args.bn_recalibration, seconds=round(time.time() - start, 1),
        )  # fmt: skip
        result.update(model=names[0]) if len(members) == 1 else result.update(members=names)
        if args.out:
            out = args.out if len(args.crops) == 1 else args.out.with_name(f"{args.out.stem}_{crops}crop.json")
        else:
            base = args.workdir[0] if args.workdir else args.weights[0]
            out = base / f"eval_{info.name}_{split}_{crops}crop.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{crops:>3} crop(s): top-1 error {result['top1_error']:.2f}%  top-5 error {result['top5_error']:.2f}%  "
              f"({result['num_examples']} images, {result['seconds']} s) -> {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(cpu_settings.apply(sys.argv)[1:]))  # the CPU settings before jax starts its backends
