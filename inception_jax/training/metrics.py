"""Where the numbers go: `metrics.jsonl` and TensorBoard events in the workdir (only process 0 writes), the
averaging of per-step training metrics between log lines, and the one-step-late reading of a step's metrics. The
console line is `progress`, the PNG `plots`.

Not clu's metric writers (flax's examples use them): clu is not a dependency here, and its TensorBoard writer
imports TensorFlow, which must load after the input pipeline's own imports (`data/_tf.py`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

JSONL = "metrics.jsonl"


class MetricWriter:
    """Scalars by step, to `workdir/metrics.jsonl` (one JSON object per line: step, split, metrics, wall time) and
    to TensorBoard (`workdir/tensorboard`, tags `train/loss`, `eval/top1`, ...).

    The event file is written with tensorboard's record writer on a plain file: its `EventFileWriter` would import
    TensorFlow, which must not load before the input pipeline sets up its own import order.
    """

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, JSONL)
        self._records = None
        if self.enabled:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.summary.writer.record_writer import RecordWriter

            events_dir = os.path.join(workdir, "tensorboard")
            os.makedirs(events_dir, exist_ok=True)
            name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
            self._records = RecordWriter(open(os.path.join(events_dir, name), "wb"))  # noqa: SIM115
            self._records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = {k: float(v) for k, v in metrics.items()}
        now = time.time()
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **values, "time": now}) + "\n")
        summary = Summary(value=[Summary.Value(tag=f"{split}/{k}", simple_value=v) for k, v in values.items()])
        self._records.write(Event(summary=summary, step=int(step), wall_time=now).SerializeToString())

    def flush(self) -> None:
        if self._records is not None:
            self._records.flush()

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None


class TrainWindow:
    """Averages the per-step training metrics between two log lines, and measures images/s over every step but
    the first (which includes compilation), minus paused time (evaluations, checkpoint copies)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._records: list[dict] = []
        self._window_steps = 0  # timed steps in the current window
        self._t0: float | None = None  # None until the first step is done
        self.timed_steps, self.timed_seconds = 0, 0.0  # over the whole run

    def add(self, metrics: Mapping[str, float]) -> None:
        """Records a finished step (call it when the step's metrics have arrived from the devices)."""
        self._records.append(dict(metrics))
        if self._t0 is None:
            self._t0 = time.perf_counter()
        else:
            self._window_steps += 1

    def pause(self, seconds: float) -> None:
        """Excludes `seconds` of non-training work from the rate."""
        if self._t0 is not None:
            self._t0 += seconds

    def flush(self) -> dict[str, float]:
        """The window's mean metrics over its finite steps (all steps when none was finite), `skipped` the number
        of steps the non-finite guard dropped, plus images_per_sec once a timed step exists; starts a new window."""
        finite = [r for r in self._records if not r.get("skipped")] or self._records
        record = {k: float(sum(r[k] for r in finite) / len(finite)) for k in finite[0]}
        record["skipped"] = float(sum(r.get("skipped", 0.0) for r in self._records))
        now = time.perf_counter()
        if self._window_steps:
            elapsed = now - self._t0
            record["images_per_sec"] = self._window_steps * self.batch_size / elapsed
            self.timed_steps += self._window_steps
            self.timed_seconds += elapsed
        if self._t0 is not None:
            self._t0 = now
        self._records, self._window_steps = [], 0
        return record

    @property
    def images_per_sec(self) -> float:
        """Over all timed steps flushed so far."""
        return self.timed_steps * self.batch_size / self.timed_seconds if self.timed_seconds else 0.0


def read_jsonl(path: str) -> list[dict]:
    """Every record of a metrics.jsonl file (a resumed run appends to it; later records of a step win)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class StepMetrics:
    """Reads each step's metrics one step late: `push(step, device_metrics)` right after dispatching a step reads
    the previous one's (by then computed, so the host never waits on the device it just fed), checks it with
    `check(step, metrics)`, adds it to the averaging window and logs a window every `log_every` steps and at the
    last step. `flush()` reads the one still in flight (before an evaluation, a checkpoint, the end)."""

    def __init__(self, window: TrainWindow, writer: MetricWriter, check: Callable[[int, Mapping], None],
                 on_logged: Callable[[int, dict], None], *, log_every: int, total_steps: int,
                 steps_per_epoch: int) -> None:  # fmt: skip
        self.window, self.writer, self.check, self.on_logged = window, writer, check, on_logged
        self.log_every, self.total_steps, self.steps_per_epoch = log_every, total_steps, steps_per_epoch
        self._pending: tuple[int, Any] | None = None

    def push(self, step: int, device_metrics: Any) -> None:
        self.flush()
        self._pending = (step, device_metrics)

    def flush(self) -> None:
        if self._pending is None:
            return
        step, device_metrics = self._pending
        self._pending = None
        metrics = jax.device_get(device_metrics)
        self.check(step, metrics)
        self.window.add(metrics)
        record = None
        if step % self.log_every == 0 or step == self.total_steps:
            record = self.window.flush()
            record["epoch"] = step / self.steps_per_epoch
            self.writer.write(step, "train", record)
        self.on_logged(step, record)
