"""Input pipeline: data sets by name, Inception preprocessing, multi-crop views, per-host batches.

    config.dataset = data.default_dataset_config(); config.dataset.name = "digits"
    info = data.get_info(config.dataset)
    batches = data.make_iterator(config.dataset, split=info.train_split, image_size=299, global_batch_size=256,
                                 train=True, seed=0, start_step=step)

The names that need TensorFlow (everything but the config and `get_info` for the built-in data sets) import it
on first use, so `import inception_jax.data` stays cheap.
"""

import importlib

from inception_jax.data.config import default_dataset_config
from inception_jax.data.registry import get_info, open_source
from inception_jax.data.source import BadImageError, DatasetInfo, Source

_LAZY = {
    "make_iterator": "pipeline",
    "num_eval_batches": "pipeline",
    "BatchIterator": "pipeline",
    "preprocess_train": "preprocessing",
    "preprocess_eval": "preprocessing",
    "multi_crop_views": "crops",
}

__all__ = ["BadImageError", "DatasetInfo", "Source", "default_dataset_config", "get_info", "open_source", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"inception_jax.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'inception_jax.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
