"""Convert a timm `.safetensors` checkpoint or a Keras application's weights into an inception_jax checkpoint
directory.

    python -m inception_jax.weights --timm inception_v4 --safetensors model.safetensors --out weights/inception_v4
    python -m inception_jax.weights --keras inception_v3 --weights inception_v3.weights.h5 --out weights/keras_v3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inception_jax import models
from inception_jax.weights import store
from inception_jax.weights.keras_applications import KERAS_MODELS
from inception_jax.weights.timm import TIMM_MODELS, WeightImportError

MODEL_FIELDS = ("num_classes", "include_top", "aux_logits", "bn_scale", "bn_epsilon", "avg_pool_include_padding",
                "residual_scales", "num_blocks")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inception_jax.weights", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--timm", help=f"timm model name: {', '.join(TIMM_MODELS)} (with --safetensors)")
    source.add_argument("--keras", help=f"Keras application, by our name: {', '.join(KERAS_MODELS)} (with --weights)")
    parser.add_argument("--safetensors", type=Path, help="the timm model's .safetensors file")
    parser.add_argument("--weights", type=Path, help="the Keras model's .weights.h5 (save_weights) or .keras file")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (must not hold variables yet)")
    args = parser.parse_args(argv)
    name, path, flag = ((args.timm, args.safetensors, "--safetensors") if args.timm else
                        (args.keras, args.weights, "--weights"))  # fmt: skip
    supported = TIMM_MODELS if args.timm else tuple(KERAS_MODELS)
    if name.split(".")[0] not in supported:
        parser.error(f"{'--timm' if args.timm else '--keras'} {name!r} is not supported; choose one of "
                     f"{', '.join(supported)}")  # fmt: skip
    if path is None or not path.is_file():
        parser.error(f"{flag} {path} does not exist" if path else f"{flag} FILE is required with this source")
    if (args.out / store.VARIABLES_DIR).exists():
        parser.error(f"--out {args.out} already holds a checkpoint; choose another directory")

    try:
        if args.timm:
            from safetensors.numpy import load_file

            from inception_jax.weights.timm import from_timm

            model, variables = from_timm(name, load_file(str(path)))
        else:
            from inception_jax.weights.keras_applications import from_keras, load_keras_model

            model, variables = from_keras(load_keras_model(name, path), name=name)
    except WeightImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    config = {k: getattr(model, k) for k in MODEL_FIELDS if hasattr(model, k)}
    out = store.save(args.out, name.split(".")[0], config, variables)
    print(f"wrote {out} ({models.count_params(variables['params']):,} parameters"
          + (f", {config['num_classes']} classes)" if model.include_top else ", features only)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
