"""The training loop's parts, each alone: the cadence helper, the non-finite guard, the one-step-late metrics
buffer and preemption."""

import os
import signal

import numpy as np
import pytest

from inception_jax.training import metrics as metrics_lib
from inception_jax.training.guard import NonFiniteError, NonFiniteGuard
from inception_jax.training.loop import is_time
from inception_jax.training.preemption import Preemption


def test_is_time_at_multiples_and_the_last_step_only():
    assert [s for s in range(1, 11) if is_time(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if is_time(s, 0, 10)] == [10]  # 0: at the end only
    assert [s for s in range(1, 6) if is_time(s, 1, 5)] == [1, 2, 3, 4, 5]


def step(skipped: bool) -> dict:
    return {"skipped": float(skipped), "loss": np.nan if skipped else 1.0, "grad_norm": 1.0, "param_norm": 1.0}


def test_guard_stops_at_the_first_non_finite_step_under_stop():
    stops = []
    guard = NonFiniteGuard("stop", 10, lambda s, m: stops.append(s) or "no checkpoint was saved before it")
    guard.check(1, step(False))
    with pytest.raises(NonFiniteError, match=r"at step 2 \(nan_policy=stop\).*no checkpoint was saved"):
        guard.check(2, step(True))
    assert stops == [2]


def test_guard_skips_until_too_many_in_a_row():
    stops, warned = [], []
    guard = NonFiniteGuard("skip", 3, lambda s, m: stops.append(s) or "", before_warning=lambda: warned.append(1))
    for s, skipped in enumerate([True, True, False, True, True], start=1):
        guard.check(s, step(skipped))
    assert guard.total == 4 and guard.in_a_row == 2 and not stops and len(warned) == 4
    with pytest.raises(NonFiniteError, match="3 skipped steps in a row, nan_max_skips=3"):
        guard.check(6, step(True))
    assert stops == [6]


class FakeWriter:
    def __init__(self):
        self.records = []

    def write(self, step, split, metrics):
        self.records.append((step, split, dict(metrics)))


def test_step_metrics_reads_each_step_one_step_late_and_logs_windows():
    writer, checked, shown = FakeWriter(), [], []
    buffer = metrics_lib.StepMetrics(metrics_lib.TrainWindow(batch_size=4), writer,
                                     lambda s, m: checked.append(s), lambda s, r: shown.append((s, r is not None)),
                                     log_every=2, total_steps=5, steps_per_epoch=10)  # fmt: skip
    for s in range(1, 6):
        buffer.push(s, {"loss": float(s), "accuracy": 0.5, "skipped": 0.0})
        assert checked == list(range(1, s))  # the step just pushed is still in flight
    buffer.flush()
    buffer.flush()  # nothing left: no second read
    assert checked == [1, 2, 3, 4, 5]
    assert [(s, logged) for s, logged in shown] == [(1, False), (2, True), (3, False), (4, True), (5, True)]
    assert [(s, r["loss"], r["epoch"]) for s, _, r in writer.records] == [(2, 1.5, 0.2), (4, 3.5, 0.4), (5, 5.0, 0.5)]


def test_preemption_catches_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with Preemption() as preemption:
        assert not preemption.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested
    assert signal.getsignal(signal.SIGTERM) is before
