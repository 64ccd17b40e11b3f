"""The data sets that need no TensorFlow to open, each a `Source`:

- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, labels 0-9, no download), split once and
  for all by a fixed permutation into 1,437 train and 360 test images.
- `fashion_mnist` from IDX files: the four files of the MNIST layout (60,000 train, 10,000 test, 28x28 grayscale).
- `image_folder`: the user's images, one sub-directory per class.
- `fake`: random images of any shape, for benchmarks.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import zlib
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from inception_jax.data.source import SIMPLE, ArraySource, BadImageError, DatasetInfo, Source, make_info

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# The first bytes of the formats tf.io.decode_image reads (whatever the file's extension says).
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


# --- digits -------------------------------------------------------------------------------------------------------

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


@functools.cache
def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 17 grey levels (0-16) spread over 0-255.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    test = np.zeros(len(labels), bool)
    test[np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))[:DIGITS_TEST_SIZE]] = True
    return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}


def open_digits(config: ml_collections.ConfigDict) -> Source:
    splits = digits_splits()
    info = make_info(config, "digits", 10, {k: len(v[1]) for k, v in splits.items()},
                     class_names=tuple(str(i) for i in range(10)), image_shape=(8, 8, 1), preprocessing=SIMPLE)
    return ArraySource(info, splits.__getitem__)


# --- IDX (MNIST layout) ---------------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_UBYTE = 0x08


def _idx_path(directory: str, stem: str) -> str | None:
    for path in (os.path.join(directory, stem + ".gz"), os.path.join(directory, stem)):
        if os.path.isfile(path):
            return path
    return None


def _open_idx_file(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _idx_header(f) -> tuple[int, ...]:
    """Dimensions from an IDX header (big-endian: 0, 0, type, rank, then one uint32 per dimension)."""
    magic = f.read(4)
    if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != _IDX_UBYTE:
        raise ValueError(f"{getattr(f, 'name', f)} is not an unsigned-byte IDX file")
    return tuple(int(d) for d in np.frombuffer(f.read(4 * magic[3]), ">u4"))


@functools.cache
def read_idx(path: str) -> np.ndarray:
    """A whole IDX file (gzipped or not) as a uint8 array."""
    with _open_idx_file(path) as f:
        shape = _idx_header(f)
        data = np.frombuffer(f.read(), np.uint8)
    if data.size != np.prod(shape):
        raise ValueError(f"{path}: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def idx_files(directory: str) -> dict[str, tuple[str, str]] | None:
    """{split: (images, labels)} paths when `directory` holds all four MNIST-layout files, else None."""
    found = {split: tuple(_idx_path(directory, stem) for stem in stems) for split, stems in IDX_FILES.items()}
    return None if any(p is None for paths in found.values() for p in paths) else found


def open_idx(config: ml_collections.ConfigDict, name: str, files: dict[str, tuple[str, str]],
              class_names: tuple[str, ...]) -> Source:
    counts = {}
    for split, (images, labels) in files.items():
        with _open_idx_file(images) as f:
            n, h, w = _idx_header(f)
        with _open_idx_file(labels) as f:
            (n_labels,) = _idx_header(f)
        if n != n_labels:
            raise ValueError(f"{images} has {n} images but {labels} has {n_labels} labels")
        counts[split] = n

    def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = files[split]
        return read_idx(images)[..., None], read_idx(labels).astype(np.int32)

    info = make_info(config, name, len(class_names), counts, class_names=class_names, image_shape=(h, w, 1),
                     preprocessing=SIMPLE)
    return ArraySource(info, load_split)


# --- image folder ---------------------------------------------------------------------------------------------------


def _images_under(directory: str) -> list[str]:
    return sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(directory, followlinks=True)
        for f in files
        if f.lower().endswith(IMAGE_EXTENSIONS)
    )


def _header_problem(path: str) -> str | None:
    """Why `path` is not an image by its first bytes (unreadable, empty, another kind of file), or None. Reads 8
    bytes: cheap enough to run on every file when a data set is opened."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as error:
        return f"unreadable ({error.strerror})"
    if not head:
        return "empty"
    if not head.startswith(IMAGE_SIGNATURES):
        return f"not a JPEG, PNG, GIF or BMP file (first bytes {head[:4]!r})"
    return None


def _drop_bad_images(paths: list[str], skip: bool) -> list[str]:
    """`paths` without the files that are not images by their header; raises BadImageError naming them unless
    `skip`, which logs how many were left out."""
    bad = {p: why for p in paths if (why := _header_problem(p))}
    if not bad:
        return paths
    listed = "; ".join(f"{p}: {why}" for p, why in list(bad.items())[:5]) + ("; ..." if len(bad) > 5 else "")
    if not skip:
        raise BadImageError(f"image_folder: {len(bad)} file(s) are not images: {listed}. Fix or remove them, or set "
                            "config field dataset.skip_bad_images=True to leave them out")
    from absl import logging

    logging.warning("image_folder: left out %d file(s) that are not images (dataset.skip_bad_images): %s", len(bad),
                    listed)
    return [p for p in paths if p not in bad]


def _subdirs(directory: str) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


class ImageFolderSource(Source):
    """<dir>/<class>/<image>, split by hashing each path (stable when images are added), or
    <dir>/<split>/<class>/<image> when <dir>/<train_split> exists. Labels number the class names in sorted order."""

    value_dtype = "string"
    value_shape = ()

    def __init__(self, config: ml_collections.ConfigDict):
        root = config.image_folder_dir
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(
                f"image_folder: config field dataset.image_folder_dir = {root!r} is not a directory; point it at a "
                "directory with one sub-directory of images per class."
            )
        train_split = config.train_split or "train"
        if os.path.isdir(os.path.join(root, train_split)):  # <dir>/<split>/<class>/<image>
            eval_split = config.eval_split or next(
                (s for s in ("validation", "val", "test") if os.path.isdir(os.path.join(root, s))), "test")
            split_names = [train_split, eval_split]
            split_dirs = [os.path.join(root, s) for s in split_names]
            if not os.path.isdir(split_dirs[1]):
                raise FileNotFoundError(f"image_folder: {split_dirs[1]} is not a directory; name the evaluation "
                                        "split's directory in config field dataset.eval_split")
            classes = sorted(set().union(*(_subdirs(d) for d in split_dirs)))
            files = {s: self._labelled(d, classes, config.skip_bad_images)
                     for s, d in zip(split_names, split_dirs, strict=True)}
        else:  # <dir>/<class>/<image>
            split_names = [train_split, config.eval_split or "test"]
            classes = _subdirs(root)
            everything = self._labelled(root, classes, config.skip_bad_images)
            threshold = int(config.image_folder_eval_fraction * 2**32)
            held_out = np.array([zlib.crc32(os.path.relpath(p, root).encode()) < threshold for p in everything[0]],
                                bool)
            files = {split_names[0]: (everything[0][~held_out], everything[1][~held_out]),
                     split_names[1]: (everything[0][held_out], everything[1][held_out])}
        if not classes or not len(files[split_names[0]][0]):
            raise FileNotFoundError(f"image_folder: no images ({', '.join(IMAGE_EXTENSIONS)}) in class "
                                    f"sub-directories of {root} (config field dataset.image_folder_dir)")
        self._files = files
        self.info = DatasetInfo(name="image_folder", num_classes=len(classes),
                                num_examples={s: len(f[0]) for s, f in files.items()},
                                train_split=split_names[0], eval_split=split_names[1], class_names=tuple(classes))

    @staticmethod
    def _labelled(directory: str, classes: list[str], skip_bad: bool) -> tuple[np.ndarray, np.ndarray]:
        paths, labels = [], []
        for label, name in enumerate(classes):
            if os.path.isdir(os.path.join(directory, name)):
                found = _drop_bad_images(_images_under(os.path.join(directory, name)), skip_bad)
                paths += found
                labels += [label] * len(found)
        return np.array(paths, dtype=object), np.array(labels, np.int32)

    def read(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        paths, labels = self._files[split]
        return paths[indices], labels[indices]

    def decode_tf(self, value: tf.Tensor, label: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
        from inception_jax.data._tf import tf

        image = tf.io.decode_image(tf.io.read_file(value), channels=3, expand_animations=False)
        return image, label

    def undecodable(self, values: np.ndarray) -> list[str]:
        from inception_jax.data._tf import tf

        bad = []
        for path in dict.fromkeys(values):
            path = path.decode() if isinstance(path, bytes) else str(path)
            try:
                tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            except tf.errors.OpError as error:  # keep TF's reason, without its op and device names
                reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message or type(error).__name__).strip()
                bad.append(f"{path} ({reason})")
        return bad


# --- fake -----------------------------------------------------------------------------------------------------------


class FakeSource(Source):
    """Random uint8 images, each a pure function of its split and index; label = index mod num_classes."""

    value_dtype = "int64"
    value_shape = ()

    def __init__(self, config: ml_collections.ConfigDict):
        shape = tuple(int(d) for d in config.fake_image_shape)
        if len(shape) != 3 or shape[2] not in (1, 3) or min(shape) < 0:
            raise ValueError(f"config field dataset.fake_image_shape must be (h, w, 1 or 3), got {shape}")
        self._shape = shape
        self.info = make_info(config, "fake", int(config.num_classes), dict(config.num_examples),
                              image_shape=shape if min(shape) > 0 else None, preprocessing=SIMPLE)

    def read(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        # The split's name picks the random stream (high bits), so train and test images differ.
        keys = indices + ((zlib.crc32(split.encode()) & 0x3FFFFFFF) << 32)
        return keys, (indices % self.info.num_classes).astype(np.int32)

    def decode_tf(self, value: tf.Tensor, label: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
        from inception_jax.data._tf import tf

        shape = [d or image_size for d in self._shape[:2]] + [self._shape[2]]
        image = tf.random.stateless_uniform(shape, tf.stack([tf.constant(0, tf.int64), value]), 0, 256, tf.int32)
        return tf.cast(image, tf.uint8), label
