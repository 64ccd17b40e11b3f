"""Preemption: SIGTERM (a scheduler taking the machine back) asks the loop to checkpoint at the end of the step and
stop; rerunning the same command resumes there."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from absl import logging


class Preemption:
    """Catches SIGTERM in a single process while the loop runs (`with Preemption() as p: ... p.requested`). With
    several processes jax.distributed's own preemption notifier takes the signal and the loop asks the
    checkpointer at every step, so all processes stop at the same step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> Preemption:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
