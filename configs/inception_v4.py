"""Inception-v4 (paper Fig. 3-9) on ImageNet at 299x299 with the paper's recipe (see configs/inception_v3.py).

    python -m inception_jax.main --config configs/inception_v4.py --workdir runs/inception_v4
"""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_v4"
    config.model.aux_logits = False  # the paper's Inception-v4 has none; --config.model.aux_logits=True adds one
    config.dataset.name = "imagenet2012"
    config.image_size = 299
    return config
