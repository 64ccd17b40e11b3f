"""Inception-ResNet-v2 on ImageNet at 299x299 with the paper's recipe (see configs/inception_v3.py).

The released network (TF-slim/Keras/timm, the one with published weights and an auxiliary head); set
--config.model.variant=paper for the network of the paper's Fig. 15-19. Residual scales 0.17 / 0.10 / 0.20 (A, B, C)
as released; TF-slim's arg scope also decays the conv and dense biases (weight_decay_biases).

    python -m inception_jax.main --config configs/inception_resnet_v2.py --workdir runs/inception_resnet_v2
"""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_resnet_v2"
    config.model.variant = "released"
    config.model.residual_scales = (0.17, 0.10, 0.20)
    config.model.aux_logits = True
    config.weight_decay_biases = True
    config.dataset.name = "imagenet2012"
    config.image_size = 299
    return config
