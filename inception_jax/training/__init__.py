"""Training: the paper's recipe (TF1 RMSProp, staircase schedule, EMA), sharded jit steps, orbax checkpoints,
metrics. Entry point: `python -m inception_jax.main` (see `inception_jax/main.py`)."""

from inception_jax.training.config import default_config, validate
from inception_jax.training.loop import evaluate, train_and_evaluate
from inception_jax.training.state import TrainState, create_model, create_train_state
from inception_jax.training.steps import make_eval_step, make_train_step

__all__ = [
    "TrainState",
    "create_model",
    "create_train_state",
    "default_config",
    "evaluate",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
    "validate",
]
