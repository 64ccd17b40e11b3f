"""What every data set provides: its description (`DatasetInfo`) and random access to its examples (`Source`).

Random access by index is what lets the pipeline make every batch a pure function of (seed, step). The data sets
themselves are in `datasets` (those that need no TensorFlow to open) and `tfds_source`; `registry` opens one by name.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

INCEPTION, SIMPLE = "inception", "simple"
# Data sets whose images all have this shorter side or less get the simple preprocessing under "auto".
SIMPLE_MAX_SIDE = 63
class BadImageError(RuntimeError):
    """An input file that is not a readable image; the message names it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the schedule need to know about a data set."""

    name: str
    num_classes: int
    num_examples: dict[str, int]  # per split name
    train_split: str
    eval_split: str
    class_names: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None  # [h, w, c] when all images share it
    preprocessing: str = INCEPTION  # what preprocessing="auto" means here


class Source(abc.ABC):
    """Random access to one data set's examples.

    `read` runs in Python (inside `tf.numpy_function`) and returns per example a value of `value_dtype` and
    `value_shape` plus an int32 label; `decode_tf` turns a value into a uint8 [h, w, c] image inside the graph.
    """

    info: DatasetInfo
    value_dtype: str = "uint8"
    value_shape: tuple[int | None, ...] = (None, None, None)

    def num_examples(self, split: str) -> int:
        """Examples in `split`; a clear error for a split the data set does not have."""
        if split not in self.info.num_examples:
            raise ValueError(
                f"data set {self.info.name!r} has no split {split!r}; it has {sorted(self.info.num_examples)}. "
                "Set config field dataset.train_split / dataset.eval_split."
            )
        return self.info.num_examples[split]

    @abc.abstractmethod
    def read(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, int32 labels) of the examples at `indices` of `split`."""

    def decode_tf(self, value: tf.Tensor, label: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
        """(uint8 [h, w, c] image, int32 label) from what `read` returned for one example."""
        del image_size
        return value, label

    def undecodable(self, values: np.ndarray) -> list[str]:
        """Descriptions of the values among `values` (as `read` returned them) that `decode_tf` fails on: called
        after the pipeline failed, to name the culprit. Sources whose values always decode return []."""
        del values
        return []


def make_info(config: ml_collections.ConfigDict, name: str, num_classes: int, num_examples: Mapping[str, int],
               **kwargs) -> DatasetInfo:
    """A DatasetInfo with the configured split names, or the defaults: "train", and "validation" or "test"."""
    train_split = config.train_split or "train"
    eval_split = config.eval_split or ("validation" if "validation" in num_examples else "test")
    return DatasetInfo(name=name, num_classes=num_classes, num_examples=dict(num_examples),
                       train_split=train_split, eval_split=eval_split, **kwargs)


def check_splits(source: Source) -> Source:
    """Fails now, naming the config field, if a configured split is missing."""
    source.num_examples(source.info.train_split)
    source.num_examples(source.info.eval_split)
    return source


class ArraySource(Source):
    """Examples held in memory as uint8 [n, h, w, c] arrays, one per split."""

    def __init__(self, info: DatasetInfo, load_split):
        self.info = info
        self._load_split = load_split  # split -> (images, labels), loaded on first read
        self.value_shape = info.image_shape

    def read(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._load_split(split)
        return images[indices], labels[indices]


