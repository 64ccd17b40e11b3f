"""The tests' training config (a config file for `python -m inception_jax.main`, also imported by tests): a
few-second-to-compile Inception-ResNet-v1 (aux head on) on digits at 75x75."""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_resnet_v1"
    config.model.depth_multiplier = 0.1
    config.model.min_depth = 8
    config.model.residual_scales = (0.17, 0.10, 0.20)
    config.model.num_blocks = (1, 1, 1)
    config.model.aux_logits = True
    config.model.bn_momentum = 0.9
    config.dataset.name = "digits"
    config.dataset.random_flip = False
    config.image_size = 75
    config.batch_size = 16
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 0
    return config
