"""Pretrained weights: import from timm checkpoints and Keras applications, save and load as orbax checkpoints."""

from inception_jax.weights.keras_applications import KERAS_MODELS, from_keras, load_keras_model
from inception_jax.weights.store import load, save
from inception_jax.weights.timm import TIMM_MODELS, WeightImportError, from_timm

__all__ = ["KERAS_MODELS", "TIMM_MODELS", "WeightImportError", "from_keras", "from_timm", "load", "load_keras_model",
           "save"]
