"""The console's progress line: `[####....] step/total  rate  ETA  loss ...`, in place on a terminal, a plain log
line every 30 s in a file or a CI log.

Not tqdm (installed with tensorflow-datasets): off a terminal tqdm writes every redraw into the log with carriage
returns, where this writes one readable line through absl logging; and the rate here restarts after the first step,
which holds the compilation, which tqdm's smoothing would carry into the ETA for a long time.
"""

from __future__ import annotations

import sys
import time

import jax
from absl import logging


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class ProgressBar:
    """`[####....] step/total  rate  ETA  extra` — redrawn in place on a terminal (at most every `interval` s),
    a plain log line every `log_interval` s otherwise, so files and CI logs stay readable."""

    def __init__(self, total: int, start: int = 0, interval: float = 0.5, log_interval: float = 30.0,
                 enabled: bool | None = None, stream=None):
        self.total, self.start = total, start
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if self.tty else log_interval
        self._t0 = time.monotonic()
        self._last = -float("inf")
        self.extra = ""

    def restart(self, step: int) -> None:
        """Measure the rate from here (after the first step, so that compilation does not skew the ETA)."""
        self.start, self._t0 = step, time.monotonic()

    def clear(self) -> None:
        """Wipes the in-place line so that a log message can be printed cleanly."""
        if self.enabled and self.tty:
            self.stream.write("\r" + " " * 110 + "\r")
            self.stream.flush()

    def line(self, step: int) -> str:
        done = step - self.start
        elapsed = time.monotonic() - self._t0
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        frac = step / self.total if self.total else 1.0
        bar = "#" * int(25 * frac) + "." * (25 - int(25 * frac))
        eta_text = _fmt_duration(eta) if rate > 0 else "--:--"
        return (f"[{bar}] {step}/{self.total} {rate:.2f} steps/s elapsed {_fmt_duration(elapsed)} "
                f"ETA {eta_text} {self.extra}").rstrip()

    def update(self, step: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.line(step).ljust(110)[:160])
            self.stream.flush()
        else:
            logging.info("%s", self.line(step))

    def close(self, step: int) -> None:
        self.update(step, force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
