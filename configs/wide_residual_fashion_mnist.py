"""Wide residual streams on a CPU (paper §3.3 at laptop scale): full-width Inception-ResNet-v2, all its blocks
(residual streams of 320, 1,088 and 2,080 channels), on Fashion-MNIST at 75x75, for about 25 minutes of 2 CPU cores
per run; one run with the residual scales at 1.0 and one at the paper's 0.1-0.3, through the sweep:

    python experiments/residual_scale_sweep.py --model inception_resnet_v2 --scales 1.0,0.2 \
        --config configs/wide_residual_fashion_mnist.py --workdir /tmp/wide_residual

Budget: 1,800 steps of 32 (about an epoch), sized from the benchmark's 42.5 images/s for this train step on a
2-core AMD EPYC VM (docs/performance.md). Measured there with this config: training loops of 1,561 s (scale 1.0) and
1,502 s (0.2), compile and the final evaluation included (the evaluation with BN recalibration took 80-87 s); the
results are in experiments/results/wide_residual/ (neither run died or diverged). The paper saw its deaths "after a
few tens of thousands of iterations": a run this short that does not die says so only up to its last step.

The recipe is configs/fashion_mnist_pure_vs_residual.py's, read from it: only the network (full width), the budget
and the cadence change; `dead_channels` is logged every 25 steps.
"""

from pathlib import Path

from inception_jax.training.config import load_config_file, model_defaults


def get_config():
    config = load_config_file(str(Path(__file__).with_name("fashion_mnist_pure_vs_residual.py")))
    config.model.name = "inception_resnet_v2"
    config.model.variant = "released"
    config.model.residual_scales = (0.17, 0.10, 0.20)  # the sweep sets all three to each scale
    config.model.depth_multiplier = model_defaults()["depth_multiplier"]  # full width
    config.model.min_depth = model_defaults()["min_depth"]

    config.num_train_steps = 1_800  # overrides the recipe's num_epochs
    config.log_every_steps = 25
    config.eval_every_steps = 0  # at the end only: an evaluation at full width costs minutes here
    config.checkpoint_every_steps = 300
    return config
