"""inception_jax: Inception-v3, Inception-v4, Inception-ResNet-v1 and -v2 in JAX/Flax.

Importing the package sets XLA's CPU defaults that measured fastest for these networks (see README, Performance),
unless the user already chose them: it must happen before jax is imported, which is why it lives here.
"""

import os
import sys

_CPU_FLAGS = {
    # XLA's own BatchNorm reductions are 20-30x slower than YNNPACK's, while its convolutions are faster than
    # YNNPACK's: route only reductions through YNNPACK.
    "--xla_cpu_experimental_ynn_fusion_type": "reduce",
}


def _set_default_xla_flags() -> None:
    if "jax" in sys.modules or os.environ.get("INCEPTION_JAX_KEEP_XLA_FLAGS"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"{k}={v}" for k, v in _CPU_FLAGS.items() if k not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_set_default_xla_flags()

__version__ = "0.1.0"
