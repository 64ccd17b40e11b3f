"""inception_jax: Inception-v3, Inception-v4, Inception-ResNet-v1 and -v2 in JAX/Flax.

Importing the package sets XLA's CPU defaults that measured fastest for these networks (see README, Performance),
unless the user already chose them: it must happen before jax creates its backends (importing jax first is fine,
running a computation first is too late and warns), which is why it lives here. For the same
reason the command-line programs (`python -m inception_jax.main`, `python -m inception_jax.bench`) restart
themselves once with glibc malloc settings (huge pages, one heap that keeps its memory), which only take effect at
process start.
"""

import os
import platform
import sys

_CPU_FLAGS = {
    # XLA's own BatchNorm reductions are 20-30x slower than YNNPACK's, while its convolutions are faster than
    # YNNPACK's: route only reductions through YNNPACK.
    "--xla_cpu_experimental_ynn_fusion_type": "reduce",
}


def _backend_started() -> bool:
    """Whether jax has already created its backends, which read XLA_FLAGS once: importing jax alone does not."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)
    except (ImportError, AttributeError):  # a jax without this private registry: assume the worst
        return True


def _set_default_xla_flags() -> None:
    if os.environ.get("INCEPTION_JAX_KEEP_XLA_FLAGS"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"{k}={v}" for k, v in _CPU_FLAGS.items() if k not in flags]
    if not extra:
        return
    if not _backend_started():
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
        return
    import jax

    if jax.default_backend() == "cpu":
        # Without the flag XLA hands convolutions to YNNPACK: a 147x147 32 -> 64 conv's forward + weight gradient
        # took 686 instead of 139 ms (b8, 2-core CPU).
        import warnings

        warnings.warn(
            f"inception_jax was imported after jax had started its CPU backend, too late to set XLA_FLAGS {extra}: "
            "convolution gradients may run several times slower. Import inception_jax before the first jax "
            "computation, or set XLA_FLAGS yourself (INCEPTION_JAX_KEEP_XLA_FLAGS=1 silences this).",
            stacklevel=2,
        )


# XLA's CPU runtime allocates each step's buffers afresh (several GiB at batch 8, 299x299: one 2.3 GB block of
# temporaries for an Inception-ResNet-v2 train step) and glibc maps blocks that large freshly and unmaps them when
# freed, so every step page-faulted its memory in again: 570k faults and 1.1 s of kernel time per Inception-v4 train
# step at batch 8 on 2 cores; with huge pages alone, 1.7-1.9k faults (of 2 MiB pages) and 0.4-0.7 s per
# Inception-ResNet-v2 step. Kept in one heap (threads other than the main one would map large blocks from arenas of
# their own whatever mmap_max says) and never trimmed, the memory is faulted in once: no faults and 13-14 ms of kernel
# time per step after the first. The price is a heap that does not shrink after a peak, which a training process
# reuses every step anyway.
MALLOC_TUNABLES = (
    "glibc.malloc.hugetlb=1",  # transparent huge pages for malloc's memory
    "glibc.malloc.arena_max=1",
    "glibc.malloc.mmap_max=0",  # large blocks from the heap rather than fresh mappings
    f"glibc.malloc.trim_threshold={1 << 40}",  # never hand the heap's top back
)
_CLI_MODULES = ("inception_jax.main", "inception_jax.bench")


def malloc_tunables(current: str) -> str | None:
    """`GLIBC_TUNABLES` with `MALLOC_TUNABLES` added where `current` does not set the same tunable itself (the
    user's own values win); None when nothing is missing."""
    present = {t.split("=", 1)[0] for t in current.split(":") if t}
    missing = [t for t in MALLOC_TUNABLES if t.split("=", 1)[0] not in present]
    return ":".join(filter(None, [current, *missing])) if missing else None


def _restart_with_heap_malloc() -> None:
    if os.environ.get("INCEPTION_JAX_KEEP_MALLOC"):
        return
    tunables = malloc_tunables(os.environ.get("GLIBC_TUNABLES", ""))
    if tunables is None:
        return
    argv = list(getattr(sys, "orig_argv", ()))
    if "-m" not in argv[:-1] or argv[argv.index("-m") + 1] not in _CLI_MODULES:
        return
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return
    except OSError:
        return
    os.environ["GLIBC_TUNABLES"] = tunables
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


_set_default_xla_flags()
_restart_with_heap_malloc()

__version__ = "0.1.0"
