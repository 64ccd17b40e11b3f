"""Evaluation: multi-crop and ensemble top-k error, and the paper's tables beside ours."""

from inception_jax.accuracy import topk_counts
from inception_jax.evaluation.multicrop import crop_log_probabilities, evaluate

__all__ = ["crop_log_probabilities", "evaluate", "topk_counts"]
