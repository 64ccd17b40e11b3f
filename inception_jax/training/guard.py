"""The host side of the non-finite guard. On the device a step whose loss or gradient norm is not finite leaves the
state unchanged and says so (`skipped`); here, reading those metrics anyway, the run stops (`nan_policy="stop"`, or
`nan_max_skips` such steps in a row) or counts the step and goes on. docs/faults.md has the whole story."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from absl import logging


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient norm (nan_policy "stop", or too many skips in a row)."""


class NonFiniteGuard:
    """Checks each step's metrics as they arrive from the devices. `on_stop(step, metrics)` runs before the run
    stops (it records the step and returns the sentence that names the last good checkpoint)."""

    def __init__(self, policy: str, max_skips: int, on_stop: Callable[[int, Mapping], str],
                 before_warning: Callable[[], None] = lambda: None):  # fmt: skip
        self.policy, self.max_skips = policy, max_skips
        self.on_stop, self.before_warning = on_stop, before_warning
        self.in_a_row = self.total = 0

    def check(self, step: int, metrics: Mapping) -> None:
        """Counts a skipped step, or raises NonFiniteError when the run must stop there."""
        if not metrics["skipped"]:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        what = (f"non-finite loss {float(metrics['loss']):.4g} / gradient norm {float(metrics['grad_norm']):.4g} / "
                f"weight norm {float(metrics['param_norm']):.4g} at step {step}")
        if self.policy == "skip" and self.in_a_row < self.max_skips:
            self.before_warning()
            logging.warning("%s: update skipped (%d in a row, %d in all; nan_max_skips %d)", what, self.in_a_row,
                            self.total, self.max_skips)
            return
        why = ("nan_policy=stop" if self.policy == "stop"
               else f"{self.in_a_row} skipped steps in a row, nan_max_skips={self.max_skips}")  # fmt: skip
        last = self.on_stop(step, metrics)
        advice = "set nan_policy=skip to drop such steps" if self.policy == "stop" else "raise nan_max_skips"
        raise NonFiniteError(f"{what} ({why}): stopped without saving; {last}. Lower learning_rate, or {advice}")
