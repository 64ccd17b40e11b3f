"""The paper's §3.3 setting on an accelerator: full Inception-ResNet-v2 on ImageNet, whose residual streams are
wider than 1000 filters (1,088 in the B blocks, 2,080 in the C blocks), with the paper's recipe, for the first
50,000 steps, where the paper saw unscaled variants die "after a few tens of thousands of iterations". One run per
residual scale, through the sweep script (each run sets all three of A, B, C to the scale):

    python experiments/residual_scale_sweep.py --model inception_resnet_v2 --scales 0.1,0.2,0.3,1.0 \
        --config configs/wide_residual_imagenet.py --workdir runs/wide_residual [--dry-run]

The sweep's summary gives per scale the step the last feature map's channels were all zero for a whole batch
(`dead_channels` 1.0: the paper's death), a divergence (a non-finite loss) as such, and the accuracy.

Steps: the paper's replicas took steps of 32 images each, so its iterations are not ours; 50,000 steps of a global
batch of 256 are 12.8 M images, about 10 epochs. Cost: nothing of ours has been timed on a GPU yet. Counting 3x the
network's 12.9 GMACs per image for a train step (77 GFLOP), an H100 at 30-40% of its 989 dense bfloat16 TFLOP/s
would take 0.7-0.9 hours per run, 3-4 GPU-hours for the four, if the input pipeline keeps up (3,900-5,100
images/s); an estimate, not a measurement: experiments/gpu_check.sh measures the real step time.
"""

from inception_jax.training import default_config


def get_config():
    config = default_config()
    config.model.name = "inception_resnet_v2"
    config.model.variant = "released"
    config.model.residual_scales = (0.17, 0.10, 0.20)  # as released; the sweep sets all three to each scale
    config.model.aux_logits = True
    config.model.dtype = "bfloat16"  # float32 weights, bfloat16 compute
    config.weight_decay_biases = True
    config.dataset.name = "imagenet2012"
    config.image_size = 299
    config.num_train_steps = 50_000
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 2_500
    return config
