"""Test set-up: 8 CPU devices for sharding tests and a persistent compilation cache (Inception graphs take
10-20 s each to compile on a 2-core CPU; the cache makes re-runs several times faster)."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import inception_jax  # noqa: E402,F401  (sets the CPU XLA defaults before jax is imported)
