"""Process settings that make these networks faster on XLA's CPU backend, applied by the command-line entry
points (`python -m inception_jax.main`, `python -m inception_jax.bench`, experiments/evaluate.py) when the run will
be on the CPU, never by importing the package.

- XLA flags: XLA's own BatchNorm reductions are much slower than YNNPACK's, while its convolutions are faster, so
  only reductions go to YNNPACK. XLA reads its flags once, when jax starts its backends.
- glibc malloc tunables: XLA's CPU runtime allocates each step's buffers afresh, and glibc maps blocks that large
  freshly and unmaps them when freed, so every step page-faulted its memory in again. Kept in one heap on huge
  pages and never trimmed, the memory is faulted in once. They only take effect at process start, so the entry point
  restarts itself once with them set.
Settings the user made (XLA_FLAGS, GLIBC_TUNABLES) win, key by key. Measurements: docs/performance.md.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

XLA_CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "reduce"}
MALLOC_TUNABLES = (
    "glibc.malloc.hugetlb=1",  # transparent huge pages for malloc's memory
    "glibc.malloc.arena_max=1",  # one heap: other threads would otherwise map large blocks from arenas of their own
    "glibc.malloc.mmap_max=0",  # large blocks from the heap rather than fresh mappings
    f"glibc.malloc.trim_threshold={1 << 40}",  # never hand the heap's top back
)
OFF_FLAG = "--nocpu_settings"  # the entry points' switch to leave the process as it is
_APPLIED = "INCEPTION_JAX_CPU_SETTINGS"  # set in the environment once applied (survives the restart)


def xla_flags(current: str) -> str:
    """`XLA_FLAGS` with `XLA_CPU_FLAGS` added where `current` does not set the same flag itself."""
    extra = [f"{k}={v}" for k, v in XLA_CPU_FLAGS.items() if k not in current]
    return " ".join([current, *extra]).strip()


def malloc_tunables(current: str) -> str | None:
    """`GLIBC_TUNABLES` with `MALLOC_TUNABLES` added where `current` does not set the same tunable itself (the
    user's own values win); None when nothing is missing."""
    present = {t.split("=", 1)[0] for t in current.split(":") if t}
    missing = [t for t in MALLOC_TUNABLES if t.split("=", 1)[0] not in present]
    return ":".join(filter(None, [current, *missing])) if missing else None


def runs_on_cpu(environ: dict[str, str] | None = None) -> bool:
    """Whether jax will pick its CPU backend, decided without starting it: `JAX_PLATFORMS` when set, else whether
    no GPU or TPU plugin is installed (jaxlib alone only has the CPU)."""
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return False
    return not list(importlib.metadata.entry_points(group="jax_plugins"))


def _huge_pages_available() -> bool:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def apply(argv: list[str]) -> list[str]:
    """Called first by an entry point, before jax starts: on the CPU sets the XLA flags and restarts the process
    once with the malloc tunables (where glibc and huge pages allow), and logs what it set once. Returns `argv`
    without `OFF_FLAG`, which turns all of this off."""
    if OFF_FLAG in argv:
        return [a for a in argv if a != OFF_FLAG]
    if not runs_on_cpu():
        return argv
    state = os.environ.get(_APPLIED)
    if state == "logged":  # a child process of an entry point that applied them: inherited, said already
        return argv
    if state is None:
        os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", ""))
        tunables = malloc_tunables(os.environ.get("GLIBC_TUNABLES", ""))
        restart = tunables is not None and _huge_pages_available() and "-m" in getattr(sys, "orig_argv", ())
        os.environ[_APPLIED] = "malloc" if restart else "xla"
        if restart:
            os.environ["GLIBC_TUNABLES"] = tunables
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, list(sys.orig_argv))
    what = [f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"]
    if os.environ[_APPLIED] == "malloc":
        what.append(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    print(f"inception_jax: CPU backend: set {' and '.join(what)} (turn off with {OFF_FLAG})", file=sys.stderr)
    os.environ[_APPLIED] = "logged"
    return argv
