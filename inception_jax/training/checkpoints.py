"""Checkpoints of the whole training state with orbax: asynchronous, the last K kept plus the best by evaluation
top-1, restored onto the shardings the state should have (replicated or FSDP), whatever wrote them.

Each checkpoint holds two items: `state` (the `TrainState` pytree: step, weights, BN statistics, optimiser state,
moving averages, base random key) and `meta` (JSON: the step, the data position, the seed). The data position is the
step: training batch s is a pure function of (seed, s), so the input pipeline resumes from it with no state of its
own.

Orbax writes a checkpoint into a temporary directory and renames it to `<step>` once every file is written, so a
step counts (rotation, best, resume) only when complete; a process killed mid-save leaves the temporary directory,
which orbax removes on the next start, and the previous checkpoints intact.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

BEST_METRIC = "top1"
DAMAGED = "damaged"  # <checkpoints>/damaged/<step>: checkpoints that did not restore, kept


class CheckpointError(RuntimeError):
    """No checkpoint of a workdir that has some can be restored."""


def saved_steps(directory: str) -> list[int]:
    """The steps of the finished checkpoints in `directory` (read from the directory names: no orbax, no I/O
    beyond a listing), oldest first."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(e.name) for e in os.scandir(directory) if e.is_dir() and e.name.isdigit())


class Checkpointer:
    """`workdir/checkpoints`: save every so often and at the end, keep the last `keep` and the best evaluated one."""

    def __init__(self, directory: str, keep: int = 3, keep_best: bool = True, async_save: bool = True):
        policies = [pp.LatestN(n=keep)]
        if keep_best:
            policies.append(pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            # Orbax writes a step's metrics only when best_fn is set; the preservation policy does the ranking.
            best_fn=(lambda m: m[BEST_METRIC]) if keep_best else None,
            best_mode="max",
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the highest evaluation top-1, or None when none was evaluated."""
        scored = [(m[BEST_METRIC], s) for s in self.all_steps() if (m := self._manager.metrics(s))]
        return max(scored)[1] if scored else None

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None, force: bool = False) -> bool:
        """Starts writing `state` at `step` in the background (the device->host copy happens before it returns, so
        the caller may donate `state` afterwards). `metrics` (e.g. {'top1': ...}) rank it for keep-best."""
        if step in self._manager.all_steps():
            return False
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics,
            force=force,
        )

    def path(self, step: int) -> str:
        """The directory of the checkpoint of `step`."""
        return os.path.join(self.directory, str(step))

    def _restore_one(self, target: Any, step: int) -> tuple[Any, dict]:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        )
        meta = restored["meta"]
        if not isinstance(meta, dict) or meta.get("step") != step:
            raise ValueError(f"its meta item is {meta!r}, not the metadata of step {step}")
        return restored["state"], dict(meta)

    def restore(self, abstract_state: Any, step: int | None = None, *,
                move_damaged: bool = True) -> tuple[Any, dict] | None:
        """(state, meta) of `step`, laid out as `abstract_state`'s shardings say; None when there is no checkpoint
        yet.

        Without `step`: the newest readable checkpoint. A newer one that does not restore (truncated or deleted
        files, garbled metadata) is reported with a warning and, once an older one has restored and when
        `move_damaged`, moved to `damaged/<step>` (kept, never deleted; out of the way of rotation and of the
        steps this run saves again). Raises CheckpointError naming every checkpoint when none restores.
        """
        steps = sorted(self.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            return None
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
        failures = []
        for candidate in steps:
            try:
                restored = self._restore_one(target, candidate)
            except Exception as error:  # any failure to read is a damaged checkpoint; say which and why
                reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
                logging.warning("checkpoint of step %d (%s) does not restore (%s)", candidate, self.path(candidate),
                                reason)
                failures.append((candidate, reason))
                continue
            if failures and move_damaged:
                self._move_damaged([s for s, _ in failures])
            if failures:
                logging.warning("using the older checkpoint of step %d instead (%s)", candidate,
                                self.path(candidate))
            return restored
        listed = "; ".join(f"step {s} at {self.path(s)} ({why})" for s, why in failures)
        raise CheckpointError(
            f"no checkpoint in {self.directory} restores: {listed}. Nothing was moved or deleted; if the config "
            "changed (allow_config_change), the checkpoints do not fit it: use a new --workdir"
        )

    def _move_damaged(self, steps: list[int]) -> None:
        """Moves the checkpoints of `steps` to `damaged/<step>` (a later copy of the same step gets a suffix)."""
        if jax.process_index() == 0:
            os.makedirs(os.path.join(self.directory, DAMAGED), exist_ok=True)
            for step in steps:
                destination = os.path.join(self.directory, DAMAGED, str(step))
                suffix = 1
                while os.path.exists(destination):
                    destination, suffix = os.path.join(self.directory, DAMAGED, f"{step}.{suffix}"), suffix + 1
                os.rename(self.path(step), destination)
                logging.warning("moved the damaged checkpoint of step %d to %s (kept; delete it yourself when "
                                "you no longer need it)", step, destination)
        if jax.process_count() > 1:  # the others list the directory only once process 0 has moved them
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("inception_jax: damaged checkpoints moved")
        self._manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once the cluster's preemption notice (SIGTERM through
        `jax.distributed`) has arrived; always False in a single process."""
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until the background writes are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
