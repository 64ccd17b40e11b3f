"""Inception preprocessing and multi-crop views against TensorFlow's reference ops and the TF-slim bounds."""

import numpy as np
import pytest

from inception_jax.data import crops, preprocessing
from inception_jax.data._tf import tf

SHAPES = [(375, 500, 3), (333, 251, 3), (40, 90, 3), (17, 9, 1)]


def _image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [299, 75])
def test_eval_equals_tf_central_crop_and_resize(shape, size):
    image = _image(shape)
    x = tf.image.convert_image_dtype(image, tf.float32)
    if shape[-1] == 1:
        x = tf.image.grayscale_to_rgb(x)
    expected = (tf.image.resize(tf.image.central_crop(x, 0.875), [size, size], method="bilinear") - 0.5) * 2.0
    out = preprocessing.preprocess_eval(image, size)
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5, rtol=0)


def _windows(shape, n=2000):
    """n training crop windows of an image of `shape`, each from its own seed, as (h, w) pairs."""
    ds = tf.data.Dataset.range(n).map(
        lambda i: preprocessing.train_crop_window_tf(tf.constant(shape), tf.stack([tf.constant(7, tf.int64), i]))[1])
    return next(iter(ds.batch(n))).numpy()


@pytest.mark.parametrize("shape", [(375, 500, 3), (500, 375, 3), (299, 299, 3)])
def test_train_crops_respect_area_and_aspect_bounds(shape):
    h, w = _windows(shape).T
    whole = (h == shape[0]) & (w == shape[1])
    area = h * w / (shape[0] * shape[1])
    aspect = w / h
    # Area: between min_object_covered (the whole image is the box, so its coverage is the area) and 1.
    assert area.min() >= preprocessing.MIN_OBJECT_COVERED - 1e-3 and area.max() <= 1.0
    # Aspect within the range, up to the rounding of the height and width to whole pixels.
    lo, hi = preprocessing.ASPECT_RATIO_RANGE
    crop = ~whole
    assert np.all(aspect[crop] >= lo - 1.0 / h[crop]) and np.all(aspect[crop] <= hi + 1.0 / h[crop])
    # The sampler explores the whole range, and falls back to the whole image only rarely.
    assert area[crop].min() < 0.15 and area[crop].max() > 0.9
    assert aspect[crop].min() < 0.8 and aspect[crop].max() > 1.25
    assert whole.mean() < 0.1


def test_train_crop_falls_back_to_whole_image():
    # No 0.75-1.33 crop of a 1000x10 strip covers 10% of it: every attempt fails.
    h, w = _windows((10, 1000, 3), n=50).T
    assert np.all(h == 10) and np.all(w == 1000)


@pytest.mark.parametrize("mode", ["inception", "simple"])
def test_train_outputs_are_deterministic_and_in_range(mode):
    image = _image((120, 160, 3))
    a = preprocessing.preprocess_train(image, 64, seed=3, mode=mode)
    b = preprocessing.preprocess_train(image, 64, seed=3, mode=mode)
    c = preprocessing.preprocess_train(image, 64, seed=(3, 1), mode=mode)
    assert a.shape == (64, 64, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for seed in range(10):
        out = preprocessing.preprocess_train(image, 64, seed=seed, mode=mode)
        assert out.min() >= -1.0 and out.max() <= 1.0


def test_train_matches_slim_steps():
    """Re-does TF-slim's fast-mode chain with TF's own ops, reading the random draws from the same seeds."""
    image = _image((200, 300, 3), seed=1)
    seed = tf.constant([5, 9], tf.int64)
    crop_seed, flip_seed, brightness_seed, saturation_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image.shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed, min_object_covered=0.1,
        aspect_ratio_range=(0.75, 1.33), area_range=(0.05, 1.0), max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    x = tf.slice(tf.image.convert_image_dtype(image, tf.float32), begin, size)
    x = tf.image.resize(x, [128, 128], method="bilinear")
    x = tf.image.stateless_random_flip_left_right(x, flip_seed)
    x = tf.image.adjust_brightness(x, tf.random.stateless_uniform([], brightness_seed, -32 / 255, 32 / 255))
    x = tf.image.adjust_saturation(x, tf.random.stateless_uniform([], saturation_seed, 0.5, 1.5))
    expected = (tf.clip_by_value(x, 0.0, 1.0) - 0.5) * 2.0
    out = preprocessing.preprocess_train(image, 128, seed=(5, 9))
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5, rtol=0)


def test_simple_eval_is_a_plain_resize():
    image = _image((8, 8, 1))
    out = preprocessing.preprocess_eval(image, 32, mode="simple")
    expected = tf.image.resize(tf.image.grayscale_to_rgb(tf.constant(image, tf.float32)), [32, 32]) / 127.5 - 1.0
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        preprocessing.preprocess_eval(np.zeros((8, 8, 3), np.float32), 32)
    with pytest.raises(ValueError, match="mode"):
        preprocessing.preprocess_eval(_image((8, 8, 3)), 32, mode="fancy")


@pytest.mark.parametrize("shape", [(375, 500, 3), (500, 375, 3)])
def test_144_crops(shape):
    image = _image(shape)
    views = crops.multi_crop_views(image, 299, 144)
    assert views.shape == (144, 299, 299, 3) and views.dtype == np.float32
    assert views.min() >= -1.0 and views.max() <= 1.0
    # [scale, square, crop, mirror]: every odd view mirrors the view before it, and no two pairs coincide.
    np.testing.assert_array_equal(views[1::2], views[0::2, :, ::-1])
    pairs = views[0::2].reshape(72, -1)
    assert len(np.unique(pairs[:, ::997], axis=0)) == 72
    assert crops.shorter_sides(299, 144) == (342, 384, 427, 470)


def test_144_crop_geometry():
    """The first scale's first square's top-left crop is the top-left corner of the image resized to 342."""
    image = _image((300, 400, 3))
    views = crops.multi_crop_views(image, 299, 144)
    resized = tf.image.resize(image, [342, 456], method="bilinear")
    np.testing.assert_allclose(views[0], (resized[:299, :299] / 255.0 - 0.5).numpy() * 2.0, atol=1e-5)
    # ...and its 6th crop is the whole left square resized.
    whole = tf.image.resize(resized[:, :342], [299, 299], method="bilinear")
    np.testing.assert_allclose(views[10], (whole / 255.0 - 0.5).numpy() * 2.0, atol=1e-5)


def test_12_and_1_crops():
    image = _image((375, 500, 3))
    twelve = crops.multi_crop_views(image, 299, 12)
    assert twelve.shape == (12, 299, 299, 3)
    np.testing.assert_array_equal(twelve[1::2], twelve[0::2, :, ::-1])
    one = crops.multi_crop_views(image, 299, 1)
    np.testing.assert_array_equal(one[0], preprocessing.preprocess_eval(image, 299))
    with pytest.raises(ValueError, match="num_crops"):
        crops.multi_crop_views(image, 299, 10)
