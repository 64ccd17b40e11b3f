"""The training loop: config -> data + model -> sharded state (fresh or resumed) -> jitted steps -> metrics,
evaluations, checkpoints; and evaluation of a trained workdir."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from inception_jax import data
from inception_jax.training import bn_recalibration, optim, plots, sharding, steps
from inception_jax.training import config as config_lib
from inception_jax.training import metrics as metrics_lib
from inception_jax.training.checkpoints import Checkpointer, saved_steps
from inception_jax.training.guard import NonFiniteError, NonFiniteGuard
from inception_jax.training.preemption import Preemption
from inception_jax.training.progress import ProgressBar
from inception_jax.training.state import TrainState, create_model, create_train_state

StepCallback = Callable[[int, TrainState], None]
__all__ = ["Experiment", "NonFiniteError", "evaluate", "evaluate_variables", "is_time", "recalibrate_batchnorm",
           "restore_variables", "statistics_note", "train_and_evaluate"]  # fmt: skip


def is_time(step: int, every: int, total: int) -> bool:
    """Whether something done every `every` steps (0: never but at the end) is due after `step`: at its multiples
    and at the last step, `total` (big_vision's `itstime`)."""
    return step == total or (every > 0 and step % every == 0)


class Experiment:
    """Everything a run derives from its config before touching data: model, schedule, mesh, jitted functions and
    the state's shardings. Building it compiles nothing."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh or sharding.make_mesh()
        self.source = config_lib.validate(config, device_count=self.mesh.devices.size,
                                          process_count=jax.process_count())  # fmt: skip
        self.info = self.source.info
        self.model = create_model(config, self.info.num_classes)
        self.steps_per_epoch = self.info.num_examples[self.info.train_split] // config.batch_size
        self.total_steps = config_lib.num_train_steps(config, self.steps_per_epoch)
        self.schedule = optim.learning_rate_schedule(config, self.steps_per_epoch)
        self.tx = optim.make_optimizer(config, self.schedule)
        make_state = lambda rng: create_train_state(self.model, self.tx, rng, config.image_size)
        abstract = jax.eval_shape(make_state, jax.random.key(0))
        self.state_shardings = sharding.state_shardings(self.mesh, abstract, fsdp=config.fsdp,
                                                       min_size=config.fsdp_min_size)
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, self.state_shardings
        )
        self.init_state = jax.jit(make_state, out_shardings=self.state_shardings)
        data_sharding, replicated = sharding.data_sharding(self.mesh), sharding.replicated(self.mesh)
        bn_groups = self.mesh.devices.size if config.bn_statistics == "per_device" else 1
        train_step = steps.make_train_step(
            self.model, self.schedule, label_smoothing=config.label_smoothing,
            aux_loss_weight=config.aux_loss_weight, ema_decay=config.ema_decay, bn_groups=bn_groups, mesh=self.mesh,
            skip_non_finite=config.nan_policy == "skip",
        )
        self.train_step = jax.jit(train_step, in_shardings=(self.state_shardings, data_sharding),
                                  out_shardings=(self.state_shardings, replicated), donate_argnums=0)
        variables_shardings = {"params": self.state_shardings.params, "batch_stats": self.state_shardings.batch_stats}
        self.eval_step = jax.jit(steps.make_eval_step(self.model), in_shardings=(variables_shardings, data_sharding),
                                 out_shardings=replicated)
        bn_shardings = self.state_shardings.batch_stats
        self.statistics_step = jax.jit(bn_recalibration.make_statistics_step(self.model),
                                       in_shardings=(variables_shardings, data_sharding, bn_shardings),
                                       out_shardings=bn_shardings)


def check_resume_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Compares `config` with the config.json of a workdir that holds checkpoints, before anything is built: logs
    the safe changes, raises ConfigChangeError listing the structural ones (unless allow_config_change)."""
    steps_saved = saved_steps(os.path.join(workdir, "checkpoints"))
    path = os.path.join(workdir, "config.json")
    if not steps_saved:
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as error:
        logging.warning("cannot compare the config with the one the checkpoints were written under (%s: %s)",
                        path, error)
        return
    structural, safe = config_lib.config_changes(saved, config)
    for change in safe:
        logging.info("config changed since %s was written (allowed): %s", path, change)
    if structural and config.allow_config_change:
        for change in structural:
            logging.warning("config changed since %s was written (allow_config_change): %s", path, change)
    elif structural:
        raise config_lib.ConfigChangeError(
            f"{workdir} holds checkpoints (last step {steps_saved[-1]}) of a different run: {'; '.join(structural)}. "
            "Use a new --workdir for the new config, or --config.allow_config_change=True to resume anyway "
            "(the checkpoint's arrays must still fit)"
        )


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def recalibrate_batchnorm(experiment: Experiment, config: ml_collections.ConfigDict, variables: dict) -> dict:
    """`variables` with BatchNorm statistics recomputed over `config.bn_recalibration_batches` global training
    batches (the training order from step 0, the evaluation's preprocessing); `variables` itself is not changed."""
    batches = data.make_iterator(config.dataset, split=experiment.info.train_split, image_size=config.image_size,
                                 global_batch_size=config.batch_size, train=True, augment=False, seed=config.seed,
                                 source=experiment.source)  # fmt: skip
    on_mesh = (sharding.global_batch(batch, experiment.mesh) for batch in batches)
    return bn_recalibration.recalibrate(experiment.statistics_step, variables, on_mesh,
                                        config.bn_recalibration_batches)


def evaluate_variables(experiment: Experiment, config: ml_collections.ConfigDict, variables: dict) -> dict[str, float]:
    """top1, top5 (fractions) and mean loss over the whole eval split; padded examples do not count. With
    `bn_recalibration_batches` > 0 the BatchNorm statistics are recalibrated first, for this evaluation only; the
    result's `bn_recalibration_batches` says how many batches that took (0: the stored statistics)."""
    recalibration = config.get("bn_recalibration_batches", 0)  # absent from configs saved before it existed
    if recalibration:
        variables = recalibrate_batchnorm(experiment, config, variables)
    batches = data.make_iterator(config.dataset, split=experiment.info.eval_split, image_size=config.image_size,
                                 global_batch_size=config_lib.eval_batch_size(config), train=False, seed=config.seed,
                                 source=experiment.source)  # fmt: skip
    totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
    for batch in batches:
        sums = jax.device_get(experiment.eval_step(variables, sharding.global_batch(batch, experiment.mesh)))
        for key in totals:
            totals[key] += float(sums[key])
    count = totals.pop("count")
    if count == 0:
        raise ValueError(f"the eval split {experiment.info.eval_split!r} of {experiment.info.name} is empty")
    return {**{k: v / count for k, v in totals.items()}, "num_examples": count,
            "bn_recalibration_batches": int(recalibration)}


def statistics_note(results: dict) -> str:
    """', BN statistics recalibrated over N batches' when an evaluation's result says so, else ''."""
    batches = results.get("bn_recalibration_batches", 0)
    return f", BN statistics recalibrated over {batches} batches" if batches else ""


def _checkpoint_meta(config: ml_collections.ConfigDict, step: int, total_steps: int) -> dict:
    """What a checkpoint records beside the state: where the data stream stands (a pure function of the step)."""
    return {"step": step, "data_position": step, "seed": int(config.seed), "total_steps": total_steps}


def _evaluate_and_record(experiment: Experiment, config: ml_collections.ConfigDict, variables: dict, step: int,
                         writer: metrics_lib.MetricWriter, before_log: Callable[[], None]) -> dict[str, float]:
    """`evaluate_variables`, timed, written to the metrics and logged."""
    t0 = time.perf_counter()
    results = evaluate_variables(experiment, config, variables)
    results["seconds"] = time.perf_counter() - t0
    writer.write(step, "eval", results)
    before_log()
    logging.info("eval at step %d: top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%d examples, %.1f s%s)", step,
                 100 * results["top1"], 100 * results["top5"], results["loss"], results["num_examples"],
                 results["seconds"], statistics_note(results))  # fmt: skip
    return results


@contextlib.contextmanager
def _closing(checkpointer: Checkpointer, writer: metrics_lib.MetricWriter) -> Iterator[None]:
    """Finishes the checkpoints already started and closes the metric files, also when training stops on an
    error (those checkpoints were of good states)."""
    try:
        yield
    finally:
        checkpointer.wait()
        writer.close()
        checkpointer.close()


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: Mesh | None = None,
    experiment: Experiment | None = None,
    step_callback: StepCallback | None = None,
) -> dict[str, Any]:
    """Trains (resuming from `workdir/checkpoints` when it holds a checkpoint) until the configured number of
    steps, evaluating every `eval_every_steps` and at the end when `config.mode` is train_and_evaluate.
    `experiment`: the config's, already built (and its config validated), else built here on `mesh`.

    `step_callback(step, state)` runs after every step (profilers, tests). Returns a summary: final step, eval
    metrics, throughput, whether the run was preempted.
    """
    check_resume_config(config, workdir)
    experiment = experiment or Experiment(config, mesh)
    evaluate_too = config.mode == "train_and_evaluate"
    kept = config.model.bn_momentum ** experiment.total_steps
    if kept > 0.05:
        logging.warning("BN moving averages (model.bn_momentum %s) still hold %.0f%% of their initial values after "
                        "%d steps: evaluation will suffer; lower model.bn_momentum for short runs",
                        config.model.get("bn_momentum"), 100 * kept, experiment.total_steps)
    _write_config(config, workdir)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    restored = checkpointer.restore(experiment.abstract_state)
    if restored is None:
        state = experiment.init_state(jax.random.key(config.seed))
        logging.info("fresh start: %s, %d steps (%d per epoch)", config.model.name, experiment.total_steps,
                     experiment.steps_per_epoch)
    else:
        state, meta = restored
        logging.info("resumed from step %d (data position %d) in %s", int(state.step), meta["data_position"],
                     checkpointer.directory)
    start = int(jax.device_get(state.step))
    writer = metrics_lib.MetricWriter(workdir)
    bar = ProgressBar(experiment.total_steps, start=start)
    summary: dict[str, Any] = {"step": start, "preempted": False, "total_steps": experiment.total_steps}
    window = metrics_lib.TrainWindow(config.batch_size)

    def stop_on_non_finite(step: int, metrics: dict) -> str:
        writer.write(step, "train", metrics)  # the step that stopped the run, for whoever reads metrics.jsonl
        checkpointer.wait()
        good = checkpointer.latest_step()
        return (f"the last good checkpoint is step {good} ({checkpointer.path(good)}); rerunning resumes from it"
                if good is not None else "no checkpoint was saved before it")  # fmt: skip

    def show(step: int, record: dict | None) -> None:
        if step == start + 1:  # the first step compiled: the rate and ETA count from here
            bar.restart(step)
        if record is not None:
            speed = f" {record['images_per_sec']:.1f} img/s" if "images_per_sec" in record else ""
            bar.extra = f"loss {record['loss']:.3f} acc {record['accuracy']:.3f}{speed}"
        bar.update(step)

    guard = NonFiniteGuard(config.nan_policy, config.nan_max_skips, stop_on_non_finite, before_warning=bar.clear)
    step_metrics = metrics_lib.StepMetrics(window, writer, guard.check, show, log_every=config.log_every_steps,
                                           total_steps=experiment.total_steps,
                                           steps_per_epoch=experiment.steps_per_epoch)  # fmt: skip

    def run_eval(step: int) -> dict[str, float]:
        ema = config.eval_with_ema and config.ema_decay > 0
        results = _evaluate_and_record(experiment, config, state.variables(ema=ema), step, writer, bar.clear)
        summary.update({f"eval_{k}": v for k, v in results.items()})
        return results

    batches: Iterator = iter(())
    if start < experiment.total_steps:
        batches = data.make_iterator(config.dataset, split=experiment.info.train_split, image_size=config.image_size,
                                     global_batch_size=config.batch_size, train=True, seed=config.seed,
                                     start_step=start, source=experiment.source)  # fmt: skip
    total = experiment.total_steps
    t_start = time.perf_counter()
    step = start
    with Preemption() as preemption, _closing(checkpointer, writer):
        while step < total:
            state, device_metrics = experiment.train_step(state, sharding.global_batch(next(batches), experiment.mesh))
            step += 1
            step_metrics.push(step, device_metrics)  # reads the previous step's, now computed
            if step_callback is not None:
                step_callback(step, state)
            preempted = preemption.requested or checkpointer.reached_preemption(step)
            evaluate_now = evaluate_too and is_time(step, config.eval_every_steps, total)
            if evaluate_now or preempted or is_time(step, config.checkpoint_every_steps, total):
                step_metrics.flush()  # and the non-finite check of the step about to be saved
                paused = time.perf_counter()  # evaluations and checkpoint copies are not training time
                metrics = {"top1": run_eval(step)["top1"]} if evaluate_now else None
                checkpointer.save(step, state, _checkpoint_meta(config, step, total), metrics=metrics, force=True)
                window.pause(time.perf_counter() - paused)
            if preempted:
                summary["preempted"] = True
                bar.clear()
                logging.warning("preempted at step %d: checkpoint saved in %s; rerun the same command to resume",
                                step, checkpointer.directory)
                break
        step_metrics.flush()
        bar.close(step)
        checkpointer.wait()
        if evaluate_too and start >= total and "eval_top1" not in summary:
            run_eval(step)  # nothing left to train: report the finished run's accuracy
        writer.flush()
        summary.update(step=step, wall_seconds=time.perf_counter() - t_start, best_step=checkpointer.best_step(),
                       skipped_steps=guard.total)
        if window.timed_steps:
            summary.update(images_per_sec=window.images_per_sec, timed_steps=window.timed_steps)
        if jax.process_index() == 0 and os.path.exists(writer.path):
            with contextlib.suppress(Exception):  # a plot is a nicety; never lose a finished run over it
                summary["plot"] = plots.plot_curves(writer.path, os.path.join(workdir, plots.PLOT))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=float)
    return summary


def restore_variables(experiment: Experiment, workdir: str, which: str = "latest",
                      ema: bool = True) -> tuple[dict, int]:  # fmt: skip
    """({'params', 'batch_stats'}, step) of a workdir's checkpoint: `which` "latest" (the newest that restores; a
    damaged one is reported and left where it is) or "best" (by eval top-1), the moving-average weights if `ema`."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=experiment.config.keep_checkpoints)
    step = checkpointer.best_step() if which == "best" else None
    if step is None and (which == "best" or checkpointer.latest_step() is None):
        raise FileNotFoundError(f"no {which} checkpoint in {checkpointer.directory}")
    try:
        state, meta = checkpointer.restore(experiment.abstract_state, step, move_damaged=False)
    finally:
        checkpointer.close()
    return state.variables(ema=ema), meta["step"]


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None,
             experiment: Experiment | None = None) -> dict[str, Any]:
    """Evaluates the latest (or, with eval_checkpoint="best", the best) checkpoint in `workdir` on the eval split,
    with the moving-average weights unless eval_with_ema is off. `experiment` as for `train_and_evaluate`."""
    check_resume_config(config, workdir)
    experiment = experiment or Experiment(config, mesh)
    variables, step = restore_variables(experiment, workdir, config.eval_checkpoint,
                                        ema=config.eval_with_ema and config.ema_decay > 0)  # fmt: skip
    results = evaluate_variables(experiment, config, variables)
    results["step"] = step
    writer = metrics_lib.MetricWriter(workdir)
    writer.write(step, "eval", results)
    writer.close()
    logging.info("step %d: top-1 %.2f%%  top-5 %.2f%%%s", step, 100 * results["top1"], 100 * results["top5"],
                 statistics_note(results))
    return results
