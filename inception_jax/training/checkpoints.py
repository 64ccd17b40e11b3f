"""Checkpoints of the whole training state with orbax: asynchronous, the last K kept plus the best by evaluation
top-1, restored onto the shardings the state should have (replicated or FSDP), whatever wrote them.

Each checkpoint holds two items: `state` (the `TrainState` pytree: step, weights, BN statistics, optimiser state,
moving averages, base random key) and `meta` (JSON: the step, the data position, the seed). The data position is the
step: training batch s is a pure function of (seed, s), so the input pipeline resumes from it with no state of its
own.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

BEST_METRIC = "top1"


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

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """(state, meta) of `step` (default: the latest), laid out as `abstract_state`'s shardings say; None when
        there is no checkpoint yet."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        )
        return restored["state"], dict(restored["meta"])

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once the cluster's preemption notice (SIGTERM through
        `jax.distributed`) has arrived; always False in a single process."""
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until the background writes are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
