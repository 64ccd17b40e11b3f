"""Quickstart, the default config of `python -m inception_jax.main`: a small Inception-ResNet-v2 on scikit-learn's
digits, minutes on a laptop CPU, no download. Defined in the package (inception_jax/quickstart.py), so that an
installed package starts without --config.

    python -m inception_jax.main --config configs/quickstart.py --workdir runs/quickstart
"""

from inception_jax.quickstart import get_config

__all__ = ["get_config"]
