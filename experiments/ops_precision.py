"""How far each ops implementation is from timm, and from the other, at full width: eval-mode logits of a random
timm model (random BN statistics and affine parameters) imported into ours, in `reference` and `cpu` ops.

    python experiments/ops_precision.py [--size 299] [--batch 2] [--models inception_v3,inception_v4,...]

Prints max |a - b| / max |b| for ours(reference) vs timm, ours(cpu) vs timm and ours(cpu) vs ours(reference). At 299
the CPU kernels' Winograd convolutions run (35x35 and 17x17 maps); at 107 they do not.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from timm_reference import random_timm_model

from inception_jax import cpu_settings, weights

TIMM_MODELS = ("inception_v3", "inception_v4", "inception_resnet_v2")


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", default=",".join(TIMM_MODELS))
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    if any(n not in TIMM_MODELS for n in names):
        parser.error(f"--models takes a comma-separated subset of {TIMM_MODELS}, got {args.models!r}")
    import torch

    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
    for name in names:
        reference_model = random_timm_model(name)
        with torch.no_grad():
            timm_logits = reference_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        state = {k: v.detach().numpy().copy() for k, v in reference_model.state_dict().items()}
        logits = {}
        for ops in ("reference", "cpu"):
            model, variables = weights.from_timm(name, state, ops=ops)
            forward = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
            logits[ops] = np.asarray(forward(variables, jnp.asarray(x)))
        print(f"{name} {args.size}x{args.size} b{args.batch}: reference vs timm "
              f"{relative_error(logits['reference'], timm_logits):.1e}, cpu vs timm "
              f"{relative_error(logits['cpu'], timm_logits):.1e}, cpu vs reference "
              f"{relative_error(logits['cpu'], logits['reference']):.1e}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(cpu_settings.apply(sys.argv)[1:]))
