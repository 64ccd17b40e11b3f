"""Config → per-host batches.

Which examples make up a batch is a pure function of (seed, step), computed here in numpy: a permutation of the
split per epoch, cut into global batches, each cut into one slice per host. The augmentation of an example is a pure
function of (seed, its position in the stream). So a run resumed at step k sees exactly the batches an uninterrupted
run sees, with no iterator state to checkpoint, and hosts read disjoint examples.

tf.data does the rest: read the step's records (Python, `tf.numpy_function`), decode and preprocess them in
parallel C++ threads, batch, prefetch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np

from inception_jax.data._tf import tf
from inception_jax.data.crops import NUM_CROPS, multi_crop_views_tf
from inception_jax.data.preprocessing import preprocess_tf
from inception_jax.data.registry import open_source, resolve_preprocessing
from inception_jax.data.source import INCEPTION, BadImageError, Source

_INFINITE = 2**62
_MAX_READ_THREADS = 4


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int, block: int = 0) -> np.ndarray:
    """The order of a split's examples in one epoch. block > 0: blocks of `block` consecutive examples in random
    order, shuffled inside (for storage where scattered reads are slow)."""
    rng = np.random.default_rng([seed, epoch])
    if block <= 0 or block >= num_examples:
        return rng.permutation(num_examples)
    starts = rng.permutation(np.arange(0, num_examples, block))
    return np.concatenate([s + rng.permutation(min(block, num_examples - s)) for s in starts])


def train_indices(step: int, *, seed: int, num_examples: int, global_batch_size: int, process_index: int,
                  process_count: int, block: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, stream positions) of this host's share of training batch `step`.

    Each epoch is a new permutation; the last num_examples % global_batch_size of it are skipped (drop remainder).
    """
    per_host = global_batch_size // process_count
    epoch, k = divmod(step, num_examples // global_batch_size)
    slots = process_index * per_host + np.arange(per_host)
    indices = epoch_permutation(seed, epoch, num_examples, block)[k * global_batch_size + slots]
    return indices, step * global_batch_size + slots


def eval_indices(batch: int, *, num_examples: int, global_batch_size: int, process_index: int,
                 process_count: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, mask) of this host's share of evaluation batch `batch`: the split in order, the last
    batch padded with copies of the last example under mask 0."""
    per_host = global_batch_size // process_count
    slots = batch * global_batch_size + process_index * per_host + np.arange(per_host)
    return np.minimum(slots, num_examples - 1), (slots < num_examples).astype(np.float32)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Batches in one evaluation pass (the same on every host)."""
    return -(-num_examples // global_batch_size)


class BatchIterator(Iterator):
    """Batches as dicts of numpy arrays. `num_batches`: batches in an evaluation pass, None for training.

    A failure inside tf.data (an image that does not decode) becomes a BadImageError naming the file:
    `undecodable(step)` lists the bad examples of the batch of `step` (the batches are a pure function of it)."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], num_batches: int | None, steps_per_epoch: int,
                 start_step: int = 0, undecodable: Callable[[int], list[str]] | None = None):
        self._batches = batches
        self.num_batches = num_batches
        self.steps_per_epoch = steps_per_epoch
        self._step = start_step
        self._undecodable = undecodable

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._batches)
        except tf.errors.OpError as error:
            bad = self._undecodable(self._step) if self._undecodable is not None else []
            if not bad:
                raise
            raise BadImageError(f"batch {self._step} holds {len(bad)} file(s) that do not decode: {'; '.join(bad)}. "
                                "Fix or remove them (a rerun resumes from the last checkpoint)") from error
        self._step += 1
        return batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("a training iterator is infinite")
        return self.num_batches


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def make_iterator(
    dataset_config: ml_collections.ConfigDict,
    *,
    split: str,
    image_size: int,
    global_batch_size: int,
    train: bool,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_crops: int = 1,
    augment: bool = True,
    source: Source | None = None,
) -> BatchIterator:
    """This host's share (global_batch_size // process_count examples) of every global batch.

    Yields {"image": float32 [B, S, S, 3] in [-1, 1], "label": int32 [B]}.
    train=True: infinite, a new permutation each epoch, augmented; batch s is a pure function of (seed, s), and
    start_step=k starts with the batch an uninterrupted iterator yields (k+1)-th.
    train=True, augment=False: the same batches with the evaluation's preprocessing (BatchNorm recalibration).
    train=False: one pass over the split in order, no augmentation; the last batch is padded, and "mask" (float32,
    1 = real example) marks the padding. num_crops 12 or 144 gives images of shape [B, num_crops, S, S, 3].
    `source`: the data set `dataset_config` names, already opened (a run opens it once for all its iterators);
    opened here when not given.
    """
    source = source or open_source(dataset_config)
    num_examples = source.num_examples(split)
    process_index, process_count = _host(process_index, process_count)
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                         f"{process_count} processes")
    if train and num_examples < global_batch_size:
        raise ValueError(f"split {split!r} has {num_examples} examples, fewer than one global batch "
                         f"({global_batch_size})")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative int64, got {seed}")
    mode = resolve_preprocessing(dataset_config, source.info)
    if num_crops not in NUM_CROPS or (num_crops > 1 and (train or mode != INCEPTION)):
        raise ValueError(f"num_crops must be one of {NUM_CROPS}, and above 1 only for evaluation with the inception "
                         f"preprocessing; got {num_crops} (train={train}, preprocessing={mode})")
    per_host = global_batch_size // process_count
    block = int(dataset_config.shuffle_buffer)

    def read_step(step: np.int64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if train:
            indices, positions = train_indices(int(step), seed=seed, num_examples=num_examples,
                                               global_batch_size=global_batch_size, process_index=process_index,
                                               process_count=process_count, block=block)
            mask = np.ones(per_host, np.float32)
        else:
            indices, mask = eval_indices(int(step), num_examples=num_examples, global_batch_size=global_batch_size,
                                         process_index=process_index, process_count=process_count)
            positions = np.zeros(per_host, np.int64)
        values, labels = source.read(split, indices)
        return values, labels.astype(np.int32), mask, positions.astype(np.int64)

    value_dtype = tf.as_dtype(source.value_dtype)

    def read_tf(step: tf.Tensor):
        values, labels, mask, positions = tf.numpy_function(
            read_step, [step], [value_dtype, tf.int32, tf.float32, tf.int64], stateful=False)
        values.set_shape((per_host, *source.value_shape))
        for t in (labels, mask, positions):
            t.set_shape((per_host,))
        return values, labels, mask, positions

    seed_tensor = tf.constant(seed, tf.int64)

    def example(value, label, mask, position):
        image, label = source.decode_tf(value, label, image_size)
        if train and augment:
            image = preprocess_tf(image, image_size, train=True, mode=mode, seed=tf.stack([seed_tensor, position]),
                                  random_flip=bool(dataset_config.random_flip))
            return {"image": image, "label": label}
        if train:
            return {"image": preprocess_tf(image, image_size, train=False, mode=mode), "label": label}
        if num_crops > 1:
            image = multi_crop_views_tf(image, image_size, num_crops)
        else:
            image = preprocess_tf(image, image_size, train=False, mode=mode)
        return {"image": image, "label": label, "mask": mask}

    workers = int(dataset_config.num_workers)
    parallel = workers if workers > 0 else tf.data.AUTOTUNE
    num_batches = None if train else num_eval_batches(num_examples, global_batch_size)
    ds = tf.data.Dataset.range(start_step, _INFINITE if train else num_batches)
    ds = ds.map(read_tf, num_parallel_calls=min(_MAX_READ_THREADS, workers or os.cpu_count() or 1),
                deterministic=True)
    # Every step contributes exactly per_host examples, so re-batching restores the steps.
    ds = ds.unbatch().map(example, num_parallel_calls=parallel, deterministic=True)
    ds = ds.batch(per_host, drop_remainder=True).prefetch(int(dataset_config.prefetch))
    options = tf.data.Options()
    options.deterministic = True
    if workers > 0:
        options.threading.private_threadpool_size = workers
    ds = ds.with_options(options)
    return BatchIterator(ds.as_numpy_iterator(), num_batches, num_examples // global_batch_size, start_step,
                         lambda step: source.undecodable(read_step(np.int64(step))[0]))

