"""Pretrained weights: import from timm checkpoints, save and load as orbax checkpoints."""

from inception_jax.weights.store import load, save
from inception_jax.weights.timm import TIMM_MODELS, WeightImportError, from_timm, random_timm_model

__all__ = ["TIMM_MODELS", "WeightImportError", "from_timm", "load", "random_timm_model", "save"]
