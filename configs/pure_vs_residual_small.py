"""Pure vs residual at laptop scale (experiments/pure_vs_residual.py): every network of the paper at its full depth
(all blocks) but a fifth of the width, on scikit-learn's digits at 75x75, the same recipe and budget for all.

Only fields every network has are set here: each keeps its own block counts and residual scales. The ImageNet
version is `configs/pure_vs_residual.py`.

    python experiments/pure_vs_residual.py --config configs/pure_vs_residual_small.py --workdir runs/pvr_small
"""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_v3"  # the script sets each network in turn
    config.model.depth_multiplier = 0.2
    config.model.min_depth = 8
    config.model.aux_logits = False
    config.model.bn_momentum = 0.99  # a few hundred steps: 0.9997 would leave the moving averages near their init

    config.dataset.name = "digits"
    config.dataset.random_flip = False  # a mirrored digit is another digit (or none)
    config.image_size = 75

    config.batch_size = 32
    config.num_epochs = 6.0  # 44 steps each
    config.lr_decay_epochs = 1.0
    config.log_every_steps = 11
    config.eval_every_steps = 22  # every half epoch: the curves the paper plots
    config.checkpoint_every_steps = 132
    return config
