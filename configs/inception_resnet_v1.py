"""Inception-ResNet-v1 (paper Fig. 10-14) on ImageNet at 299x299 with the paper's recipe (see
configs/inception_v3.py). Residuals scaled per block kind (A, B, C), the paper's 0.1-0.3 range.

    python -m inception_jax.main --config configs/inception_resnet_v1.py --workdir runs/inception_resnet_v1
"""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_resnet_v1"
    config.model.residual_scales = (0.17, 0.10, 0.20)
    config.model.aux_logits = False  # none in the paper
    config.dataset.name = "imagenet2012"
    config.image_size = 299
    return config
