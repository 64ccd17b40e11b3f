"""Base config of the pure-vs-residual comparison (paper Figs. 21-26, experiments/pure_vs_residual.py): the
paper's recipe on ImageNet at 299x299, one network per run chosen with --config.model.name.

It sets nothing that only one family has (residual_scales, num_blocks, variant), so every network keeps its own
defaults, and no auxiliary head (the paper's v4 and Inception-ResNets have none), so all four train on the same
loss. Evaluates every ~epoch at batch 256 for the error-vs-epoch curves.

    python experiments/pure_vs_residual.py --config configs/pure_vs_residual.py --workdir runs/pure_vs_residual
"""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_v3"  # each run overrides it
    config.model.aux_logits = False
    config.dataset.name = "imagenet2012"
    config.image_size = 299
    config.eval_every_steps = 5_000  # 1,281,167 / 256 = 5,004 steps per epoch
    return config
