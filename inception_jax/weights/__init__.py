"""Pretrained weights: import from timm checkpoints, save and load as orbax checkpoints."""

from inception_jax.weights.store import load, save
from inception_jax.weights.timm import TIMM_MODELS, WeightImportError, from_timm

__all__ = ["TIMM_MODELS", "WeightImportError", "from_timm", "load", "save"]
