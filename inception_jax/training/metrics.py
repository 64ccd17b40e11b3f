"""Where the numbers go: TensorBoard events and `metrics.jsonl` in the workdir, a progress line on the console, and
a PNG of the curves at the end. Only process 0 writes."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping

import jax
from absl import logging

JSONL = "metrics.jsonl"
PLOT = "curves.png"


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


def plot_curves(jsonl_path: str, png_path: str) -> str:
    """Training loss, train/eval accuracy, learning rate and throughput against the step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_split: dict[str, dict[int, dict]] = {}
    for record in read_jsonl(jsonl_path):
        by_split.setdefault(record["split"], {})[record["step"]] = record
    train = [by_split.get("train", {})[s] for s in sorted(by_split.get("train", {}))]
    evals = [by_split.get("eval", {})[s] for s in sorted(by_split.get("eval", {}))]

    def series(records: list[dict], key: str) -> tuple[list, list]:
        points = [(r["step"], r[key]) for r in records if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    ax.plot(*series(train, "loss"), label="train loss")
    ax.plot(*series(evals, "loss"), "o-", label="eval loss")
    ax.set_title("loss")
    ax = axes[0, 1]
    ax.plot(*series(train, "accuracy"), label="train top-1 (dropout on)")
    ax.plot(*series(evals, "top1"), "o-", label="eval top-1")
    ax.plot(*series(evals, "top5"), "s--", label="eval top-5")
    ax.set_title("accuracy")
    axes[1, 0].plot(*series(train, "learning_rate"))
    axes[1, 0].set_title("learning rate")
    axes[1, 1].plot(*series(train, "images_per_sec"))
    axes[1, 1].set_title("images / s")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
