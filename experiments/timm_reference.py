"""timm's models as references for parity checks (needs the [parity] extra: timm and PyTorch); used by the tests
and experiments/ops_precision.py."""

from __future__ import annotations

from typing import Any


def random_timm_model(name: str, **kwargs: Any) -> Any:
    """timm's `name` (needs timm and PyTorch) with random weights and random BatchNorm statistics and affine
    parameters, in eval mode: a fresh BN layer is an identity, so parity checks against it would not exercise the
    BN tensors an import maps. `kwargs` go to `timm.create_model` (e.g. aux_logits=True)."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()
