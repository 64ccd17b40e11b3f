"""Inception-v3 (v3 paper; the released graph) on ImageNet at 299x299 with the paper's recipe: TF1 RMSProp
(decay 0.9, eps 1.0, momentum 0.9), lr 0.045 x 0.94 every 2 epochs, label smoothing 0.1, aux loss 0.4, gradient
clipping 2.0, L2 4e-5 on kernels, evaluation with the EMA (0.9999) of weights and BN statistics.

    python -m inception_jax.main --config configs/inception_v3.py --workdir runs/inception_v3 \\
        --config.dataset.data_dir=~/tensorflow_datasets

Larger global batches: --config.batch_size=1024 --config.lr_scaling=linear --config.warmup_epochs=5.
"""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_v3"
    config.model.aux_logits = True  # the v3 paper's auxiliary classifier on the 17x17 grid (weight 0.4)
    config.dataset.name = "imagenet2012"
    config.image_size = 299
    return config
