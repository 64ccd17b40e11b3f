"""Multi-crop evaluation views: 1, 12 and 144 crops (GoogLeNet, Szegedy et al. 2015 §7; used by the v4 paper).

144 crops = 4 scales × 3 squares × 6 crops × 2 mirrors. The image is resized so its shorter side is 256, 288, 320
and 352 pixels for a 224-pixel network; for image size S these are scaled by S/224 and rounded, which for S = 299
gives 342, 384, 427 and 470. From each resized image the left, centre and right squares (top, centre, bottom for
portrait images) are taken; from each square the four corner and the centre S×S crops and the whole square
resized to S×S; each of these and its mirror image.

The sources do not define the 12 crops; we use the first scale's centre square only: 6 crops × 2 mirrors.
1 crop is the ordinary evaluation preprocessing (central 87.5%, resized), so single-crop numbers match.

Views are ordered [scale, square, crop, mirror]: view 2k+1 is the mirror image of view 2k.
"""

import functools

import numpy as np

from inception_jax.data._tf import tf
from inception_jax.data.preprocessing import check_image, eval_inception_tf, to_rgb_tf, to_signed_tf

NUM_CROPS = (1, 12, 144)
SHORTER_SIDES_224 = (256, 288, 320, 352)


def shorter_sides(image_size: int, num_crops: int) -> tuple[int, ...]:
    """The resized shorter sides used for `num_crops` views of a net with input `image_size` (12 or 144 crops)."""
    sides = tuple(round(s * image_size / 224) for s in SHORTER_SIDES_224)
    return sides[:1] if num_crops == 12 else sides


def _square_offsets(length: int | tf.Tensor, side: int) -> list:
    """Start of the first, centre and last `side`-long square along an axis of `length`."""
    return [0, (length - side) // 2, length - side]


def _square(image: tf.Tensor, landscape: tf.Tensor, offset, side: int) -> tf.Tensor:
    """The side×side square starting at `offset` along the longer axis."""
    square = tf.cond(landscape, lambda: image[:side, offset:offset + side], lambda: image[offset:offset + side, :side])
    square.set_shape([side, side, 3])
    return square


def multi_crop_views_tf(image: tf.Tensor, image_size: int, num_crops: int) -> tf.Tensor:
    """uint8 [h, w, c] → float32 [num_crops, S, S, 3] in [-1, 1]."""
    if num_crops not in NUM_CROPS:
        raise ValueError(f"num_crops must be one of {NUM_CROPS}, got {num_crops}")
    if num_crops == 1:
        return eval_inception_tf(image, image_size)[None]
    image = to_rgb_tf(image)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    s = image_size
    views = []
    for side in shorter_sides(image_size, num_crops):
        # Resize so the shorter side is `side`, keeping the aspect ratio.
        scale = tf.cast(side, tf.float64) / tf.cast(tf.minimum(h, w), tf.float64)
        rh = tf.maximum(side, tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32))
        rw = tf.maximum(side, tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32))
        resized = tf.image.resize(image, tf.stack([rh, rw]), method="bilinear")
        # Squares along the longer axis (for a square image the three coincide, as in the original protocol).
        landscape = rw >= rh
        long_side = tf.maximum(rh, rw)
        offsets = _square_offsets(long_side, side)
        if num_crops == 12:
            offsets = offsets[1:2]  # the centre square only
        for offset in offsets:
            square = _square(resized, landscape, offset, side)
            first, centre, last = _square_offsets(side, s)
            crops = [square[y:y + s, x:x + s] for y, x in
                     ((first, first), (first, last), (last, first), (last, last), (centre, centre))]
            crops.append(tf.image.resize(square, [s, s], method="bilinear"))
            for crop in crops:
                views += [crop, tf.reverse(crop, axis=[1])]
    return to_signed_tf(tf.stack(views) * (1.0 / 255.0))


@functools.cache
def _compiled(image_size: int, num_crops: int):
    return tf.function(lambda image: multi_crop_views_tf(image, image_size, num_crops),
                       input_signature=[tf.TensorSpec([None, None, None], tf.uint8)], autograph=False)


def multi_crop_views(image: np.ndarray, image_size: int, num_crops: int) -> np.ndarray:
    """All evaluation views of one uint8 HxWx3 image: float32 [num_crops, S, S, 3] in [-1, 1].

    Average the network's softmax over the views to score the image."""
    return _compiled(image_size, num_crops)(check_image(image)).numpy()
