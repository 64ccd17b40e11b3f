"""Inception preprocessing exactly as TF-slim's `inception_preprocessing.py` (fast mode), and a simple mode for tiny
images. The graph functions (`*_tf`) run inside the tf.data pipeline; `preprocess_train` / `preprocess_eval` run the
same graphs on one numpy image.

One deliberate difference from the released TF1 code: resizing is TF2's `tf.image.resize` (pixel centres at +0.5),
where TF1's `resize_bilinear(align_corners=False)` sampled half a pixel off.
"""

import functools
from collections.abc import Sequence

import numpy as np

from inception_jax.data._tf import tf
from inception_jax.data.source import INCEPTION, SIMPLE

MODES = (INCEPTION, SIMPLE)

# TF-slim's distorted_bounding_box_crop defaults.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (0.75, 1.33)
AREA_RANGE = (0.05, 1.0)
MAX_ATTEMPTS = 100
# distort_color(fast_mode=True, color_ordering=0).
BRIGHTNESS_MAX_DELTA = 32.0 / 255.0
SATURATION_RANGE = (0.5, 1.5)
EVAL_CENTRAL_FRACTION = 0.875
# Simple mode translates by up to 1/8 of the shorter side, rounded (CIFAR's 4 pixels of 32; 1 of digits' 8).
SIMPLE_SHIFT_DIVISOR = 8

_WHOLE_IMAGE_BOX = ((0.0, 0.0, 1.0, 1.0),)


def train_crop_window_tf(shape: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The distorted box of TF-slim's training crop: (begin [y, x], size [h, w]) for an image of `shape` [h, w, c]."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([_WHOLE_IMAGE_BOX], tf.float32),
        seed=seed,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return begin[:2], size[:2]


def central_crop_window_tf(shape: tf.Tensor, fraction: float) -> tuple[tf.Tensor, tf.Tensor]:
    """`tf.image.central_crop`'s window, with its float64 arithmetic, as (begin [y, x], size [h, w])."""
    hw = tf.cast(shape[:2], tf.float64)
    begin = tf.cast((hw - hw * fraction) / 2, tf.int32)
    return begin, tf.cast(shape[:2], tf.int32) - 2 * begin


def _crop(image: tf.Tensor, begin: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    return tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))


def to_rgb_tf(image: tf.Tensor) -> tf.Tensor:
    """Grayscale images get three equal channels; colour images pass through."""
    if image.shape[-1] == 3:
        return image
    if image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image)
    if image.shape[-1] is not None:  # e.g. RGBA: drop alpha
        return image[..., :3]
    return tf.cond(tf.shape(image)[-1] == 1, lambda: tf.image.grayscale_to_rgb(image), lambda: image[..., :3])


def _resize_to_unit(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize to a square, values in [0, 1]. Resizing the uint8 pixels and scaling after equals slim's
    convert-then-resize (resizing is linear) and touches 4x fewer bytes before the resize."""
    return tf.image.resize(image, [image_size, image_size], method="bilinear") * (1.0 / 255.0)


def to_signed_tf(image: tf.Tensor) -> tf.Tensor:
    """[0, 1] → [-1, 1], as slim does it."""
    return (image - 0.5) * 2.0


def train_inception_tf(image: tf.Tensor, image_size: int, seed: tf.Tensor, random_flip: bool = True) -> tf.Tensor:
    """TF-slim `preprocess_for_train(fast_mode=True)` on a uint8 [h, w, c] tensor; seed: int64 [2]."""
    crop_seed, flip_seed, brightness_seed, saturation_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    begin, size = train_crop_window_tf(tf.shape(image), crop_seed)
    x = _resize_to_unit(to_rgb_tf(_crop(image, begin, size)), image_size)
    if random_flip:
        x = tf.image.stateless_random_flip_left_right(x, flip_seed)
    x = tf.image.stateless_random_brightness(x, BRIGHTNESS_MAX_DELTA, brightness_seed)
    x = tf.image.stateless_random_saturation(x, *SATURATION_RANGE, saturation_seed)
    return to_signed_tf(tf.clip_by_value(x, 0.0, 1.0))


def eval_inception_tf(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """TF-slim `preprocess_for_eval`: central 87.5% of each side, bilinear resize, [-1, 1]."""
    begin, size = central_crop_window_tf(tf.shape(image), EVAL_CENTRAL_FRACTION)
    return to_signed_tf(_resize_to_unit(to_rgb_tf(_crop(image, begin, size)), image_size))


def train_simple_tf(image: tf.Tensor, image_size: int, seed: tf.Tensor, random_flip: bool = True) -> tf.Tensor:
    """Tiny images: shift by up to 1/8 of the shorter side (zero fill), optional flip, resize, [-1, 1]."""
    shift_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = to_rgb_tf(image)
    shape = tf.shape(image)
    pad = tf.maximum(1, (tf.minimum(shape[0], shape[1]) + SIMPLE_SHIFT_DIVISOR // 2) // SIMPLE_SHIFT_DIVISOR)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, shift_seed)
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return to_signed_tf(_resize_to_unit(image, image_size))


def eval_simple_tf(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Tiny images: the whole image resized, [-1, 1]."""
    return to_signed_tf(_resize_to_unit(to_rgb_tf(image), image_size))


def preprocess_tf(
    image: tf.Tensor,
    image_size: int,
    *,
    train: bool,
    mode: str = INCEPTION,
    seed: tf.Tensor | None = None,
    random_flip: bool = True,
) -> tf.Tensor:
    """One uint8 [h, w, c] image (c = 1 or 3) → float32 [image_size, image_size, 3] in [-1, 1]."""
    if mode not in MODES:
        raise ValueError(f"preprocessing mode must be one of {MODES}, got {mode!r}")
    if train:
        fn = train_inception_tf if mode == INCEPTION else train_simple_tf
        return fn(image, image_size, seed, random_flip)
    return (eval_inception_tf if mode == INCEPTION else eval_simple_tf)(image, image_size)


def seed_pair(seed: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """A stateless-RNG seed: an int s means (s, 0); the pipeline uses (config seed, example position)."""
    pair = np.asarray([seed, 0] if np.ndim(seed) == 0 else seed, dtype=np.int64)
    if pair.shape != (2,):
        raise ValueError(f"seed must be an int or a pair of ints, got {seed!r}")
    return pair


_IMAGE_SPEC = tf.TensorSpec([None, None, None], tf.uint8)


@functools.cache
def _compiled(image_size: int, train: bool, mode: str, random_flip: bool):
    if train:
        return tf.function(
            lambda image, seed: preprocess_tf(image, image_size, train=True, mode=mode, seed=seed,
                                              random_flip=random_flip),
            input_signature=[_IMAGE_SPEC, tf.TensorSpec([2], tf.int64)],
            autograph=False,
        )
    return tf.function(lambda image: preprocess_tf(image, image_size, train=False, mode=mode),
                       input_signature=[_IMAGE_SPEC], autograph=False)


def check_image(image: np.ndarray) -> np.ndarray:
    """A uint8 HxWxC view of a uint8 HxW or HxWxC array; a clear error for anything else."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWxC image, got {image.dtype} {image.shape}")
    return image[..., None] if image.ndim == 2 else image


def preprocess_eval(image: np.ndarray, image_size: int, mode: str = INCEPTION) -> np.ndarray:
    """Evaluation preprocessing of one uint8 HxWx3 (or grayscale) image → float32 [S, S, 3] in [-1, 1]."""
    return _compiled(image_size, False, mode, False)(check_image(image)).numpy()


def preprocess_train(
    image: np.ndarray,
    image_size: int,
    seed: int | Sequence[int],
    mode: str = INCEPTION,
    random_flip: bool = True,
) -> np.ndarray:
    """Training augmentation of one uint8 image → float32 [S, S, 3] in [-1, 1]; a pure function of `seed`.

    With seed (s, p) it reproduces the example at global position p of a pipeline seeded with s."""
    return _compiled(image_size, True, mode, random_flip)(check_image(image), seed_pair(seed)).numpy()
