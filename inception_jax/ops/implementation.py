"""The one switch between an op's reference implementation and its CPU kernels.

"auto" is decided per platform when the program is lowered (`lax.platform_dependent`), not from the default
backend when it is traced, so that a program lowered for a GPU or TPU from a CPU host (or exported) holds the
reference ops, and one lowered for the CPU the CPU kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax import lax

IMPLEMENTATIONS = ("auto", "reference", "cpu")


def check_implementation(impl: str) -> None:
    """Raises ValueError unless `impl` is one of `IMPLEMENTATIONS`."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(
            f"ops must be one of {IMPLEMENTATIONS} ('auto': CPU kernels on the CPU, the reference elsewhere), "
            f"got {impl!r}"
        )


def select(impl: str, reference: Callable[..., Any], cpu: Callable[..., Any], *args: Any) -> Any:
    """`reference(*args)` or `cpu(*args)` as `impl` says; "auto" lowers `cpu` for the CPU and `reference` for
    every other platform. `args` are the arrays (static settings belong in the two callables)."""
    if impl == "reference":
        return reference(*args)
    if impl == "cpu":
        return cpu(*args)
    check_implementation(impl)
    return lax.platform_dependent(*args, cpu=cpu, default=reference)
