"""Clocks, memory high-water marks and MFU for the benchmark's measurements."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import jax

from inception_jax.bench.results import Result

# Dense bfloat16 peaks (FLOP/s) for MFU; anything else takes --peak-tflops.
DEVICE_PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12}


def time_steps(step: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `step` (which must block until its work is done), after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def peak_memory() -> tuple[float | None, str]:
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device"
    # ru_maxrss is in KiB on Linux: the whole process's high-water mark, compile included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host"


def finish(result: Result, flops_per_step: float | None, peak_flops: float | None) -> Result:
    if flops_per_step:
        result.flops_per_image = flops_per_step / result.batch
        result.achieved_tflops = flops_per_step / (result.step_ms / 1e3) / 1e12
        if peak_flops:
            result.mfu = result.achieved_tflops * 1e12 / peak_flops
    result.peak_memory_gib, result.memory_kind = peak_memory()
    return result
