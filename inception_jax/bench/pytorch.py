"""timm's models in PyTorch eager mode, timed as their users run them (the benchmark's reference)."""

from __future__ import annotations

import resource
import statistics

from inception_jax.bench.results import Result
from inception_jax.bench.timing import time_steps


def bench_timm(
    name: str,
    mode: str,
    batch: int,
    size: int,
    warmup: int,
    repeats: int,
    channels_last: bool,
    threads: int,
    amp: bool = False,
) -> Result:
    """timm's model of the same name in PyTorch eager mode: inference under inference_mode, or a train step with
    forward, backward and an RMSprop update."""
    import timm
    import torch

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(name, pretrained=False).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=amp)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast:
                model(x)
            sync()
    else:
        model.train()
        labels = torch.randint(0, 1000, (batch,), device=device)
        optimizer = torch.optim.RMSprop(model.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), labels)
            loss.backward()
            optimizer.step()
            sync()

    times = time_steps(step, warmup, repeats)
    median = statistics.median(times)
    label = "timm" + ("-channels_last" if channels_last else "") + ("-amp" if amp else "")
    kind = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = Result(label, name, mode, batch, size, "bfloat16" if amp else "float32", batch / median, median * 1e3,
                    device=kind, threads=threads)  # fmt: skip
    if device == "cuda":
        result.peak_memory_gib, result.memory_kind = torch.cuda.max_memory_allocated() / 2**30, "device"
    else:
        result.peak_memory_gib, result.memory_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host"
    return result
