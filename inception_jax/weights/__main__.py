"""Convert a timm `.safetensors` checkpoint into an inception_jax checkpoint directory.

    python -m inception_jax.weights --timm inception_v4 --safetensors model.safetensors --out weights/inception_v4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inception_jax import models
from inception_jax.weights import store
from inception_jax.weights.timm import TIMM_MODELS, WeightImportError, from_timm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inception_jax.weights", description=__doc__.splitlines()[0])
    parser.add_argument("--timm", required=True, help=f"timm model name: {', '.join(TIMM_MODELS)}")
    parser.add_argument("--safetensors", required=True, type=Path, help="the timm model's .safetensors file")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (must not hold variables yet)")
    args = parser.parse_args(argv)
    if args.timm.split(".")[0] not in TIMM_MODELS:
        parser.error(f"--timm {args.timm!r} is not supported; choose one of {', '.join(TIMM_MODELS)}")
    if not args.safetensors.is_file():
        parser.error(f"--safetensors {args.safetensors} does not exist")
    if (args.out / store.VARIABLES_DIR).exists():
        parser.error(f"--out {args.out} already holds a checkpoint; choose another directory")

    from safetensors.numpy import load_file

    try:
        model, variables = from_timm(args.timm, load_file(str(args.safetensors)))
    except WeightImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    config = {k: getattr(model, k) for k in ("num_classes", "aux_logits", "bn_scale", "avg_pool_include_padding")}
    out = store.save(args.out, args.timm.split(".")[0], config, variables)
    print(f"wrote {out} ({models.count_params(variables['params']):,} parameters, {config['num_classes']} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
