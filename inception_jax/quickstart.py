"""The quickstart, `python -m inception_jax.main`'s default config: a small Inception-ResNet-v2 on scikit-learn's 8x8
digits, upscaled to 75x75. It lives in the package so that an installed package starts without --config;
configs/quickstart.py names it beside the other experiments.

No download; minutes on a 2-core laptop CPU. The paper's recipe (TF1 RMSProp, eps 1, momentum 0.9, label
smoothing, aux loss, clipping, L2, EMA evaluation) with the schedule shortened to the run: lr decays 0.94x every
epoch instead of every 2.

    python -m inception_jax.main --config configs/quickstart.py --workdir runs/quickstart
"""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_resnet_v2"
    config.model.residual_scales = (0.17, 0.10, 0.20)
    config.model.depth_multiplier = 0.25
    config.model.min_depth = 8
    config.model.num_blocks = (2, 4, 2)
    config.model.aux_logits = True
    # 440 steps: BN moving averages at the paper's 0.9997 would still be 88% initial values at the end.
    config.model.bn_momentum = 0.99
    # Even at 0.99 the moving averages lag weights that change this fast: each evaluation recomputes the BN
    # statistics over 20 training batches first (640 images, a small part of an evaluation's cost).
    config.bn_recalibration_batches = 20
    config.weight_decay_biases = True  # as TF-slim's Inception-ResNet-v2

    config.dataset.name = "digits"
    config.dataset.random_flip = False  # a mirrored digit is another digit (or none)
    config.image_size = 75

    config.batch_size = 32
    config.num_epochs = 10.0  # 44 steps each
    config.lr_decay_epochs = 1.0

    config.log_every_steps = 11
    config.eval_every_steps = 88  # every 2 epochs; 360 test images take a second
    config.checkpoint_every_steps = 220
    return config
