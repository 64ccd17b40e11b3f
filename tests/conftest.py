"""Test set-up: 8 CPU devices for sharding tests, the entry points' CPU XLA flags, and a persistent compilation
cache (Inception graphs take 10-20 s each to compile on a 2-core CPU; the cache makes re-runs faster)."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from inception_jax import cpu_settings  # noqa: E402

# The XLA flags the entry points set on the CPU, so that tests compile what users run (before jax starts); on a GPU
# or TPU host nothing (the flags are the CPU backend's).
if cpu_settings.runs_on_cpu():
    os.environ["XLA_FLAGS"] = cpu_settings.xla_flags(os.environ["XLA_FLAGS"])


@pytest.fixture(scope="session")
def timm_and_torch():
    """(timm, torch), or a skip when the [parity] extra is missing; CI sets INCEPTION_JAX_REQUIRE_PARITY=1 so that
    a missing extra fails instead of silently skipping the parity tests."""
    try:
        import timm
        import torch
    except ImportError as error:
        message = f"timm/PyTorch not importable ({error}); install them with: pip install -e '.[parity]'"
        if os.environ.get("INCEPTION_JAX_REQUIRE_PARITY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return timm, torch
