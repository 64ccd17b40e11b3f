"""The training loop: config -> data + model -> sharded state (fresh or resumed) -> jitted steps -> metrics,
evaluations, checkpoints; and evaluation of a trained workdir."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from inception_jax import data
from inception_jax.training import bn_recalibration, optim, sharding, steps
from inception_jax.training import config as config_lib
from inception_jax.training import metrics as metrics_lib
from inception_jax.training.checkpoints import Checkpointer, saved_steps
from inception_jax.training.state import TrainState, create_model, create_train_state

StepCallback = Callable[[int, TrainState], None]


class Experiment:
    """Everything a run derives from its config before touching data: model, schedule, mesh, jitted functions and
    the state's shardings. Building it compiles nothing."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None = None):
        self.mesh = mesh or sharding.make_mesh()
        self.info = config_lib.validate(config, device_count=self.mesh.devices.size, process_count=jax.process_count())
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


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient norm (nan_policy "stop", or too many skips in a row)."""


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
                                 global_batch_size=config.batch_size, train=True, augment=False, seed=config.seed)
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
                                 global_batch_size=config_lib.eval_batch_size(config), train=False, seed=config.seed)
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


class _Preemption:
    """Catches SIGTERM in a single process and asks the loop to checkpoint and stop. With several processes
    jax.distributed's own preemption notifier takes the signal and the loop asks the checkpointer at every step,
    so all processes stop at the same step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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
    step_callback: StepCallback | None = None,
) -> dict[str, Any]:
    """Trains (resuming from `workdir/checkpoints` when it holds a checkpoint) until the configured number of
    steps, evaluating every `eval_every_steps` and at the end when `config.mode` is train_and_evaluate.

    `step_callback(step, state)` runs after every step (profilers, tests). Returns a summary: final step, eval
    metrics, throughput, whether the run was preempted.
    """
    check_resume_config(config, workdir)
    experiment = Experiment(config, mesh)
    evaluate_too = config.mode == "train_and_evaluate"
    kept = config.model.get("bn_momentum", 0.9997) ** experiment.total_steps
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
    bar = metrics_lib.ProgressBar(experiment.total_steps, start=start)
    summary: dict[str, Any] = {"step": start, "preempted": False, "total_steps": experiment.total_steps}

    def meta(step: int) -> dict:
        return {"step": step, "data_position": step, "seed": int(config.seed), "total_steps": experiment.total_steps}

    def run_eval(step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        ema = config.eval_with_ema and config.ema_decay > 0
        results = evaluate_variables(experiment, config, state.variables(ema=ema))
        results["seconds"] = time.perf_counter() - t0
        writer.write(step, "eval", results)
        bar.clear()
        logging.info("eval at step %d: top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%d examples, %.1f s%s)", step,
                     100 * results["top1"], 100 * results["top5"], results["loss"], results["num_examples"],
                     results["seconds"], statistics_note(results))
        summary.update({f"eval_{k}": v for k, v in results.items()})
        return results

    batches: Iterator = iter(())
    if start < experiment.total_steps:
        batches = data.make_iterator(config.dataset, split=experiment.info.train_split, image_size=config.image_size,
                                     global_batch_size=config.batch_size, train=True, seed=config.seed,
                                     start_step=start)
    window = metrics_lib.TrainWindow(config.batch_size)
    pending = None  # (step, metrics) of the step in flight: read after the next one is dispatched
    skips = {"in_a_row": 0, "total": 0}

    def check_finite(step: int, metrics: dict) -> None:
        """The host side of the non-finite guard, on metrics it reads anyway: the step's update was dropped on
        the device; stop (nan_policy "stop", or nan_max_skips in a row) or count it."""
        if not metrics["skipped"]:
            skips["in_a_row"] = 0
            return
        skips["in_a_row"] += 1
        skips["total"] += 1
        what = (f"non-finite loss {float(metrics['loss']):.4g} / gradient norm {float(metrics['grad_norm']):.4g} / "
                f"weight norm {float(metrics['param_norm']):.4g} at step {step}")
        if config.nan_policy == "skip" and skips["in_a_row"] < config.nan_max_skips:
            bar.clear()
            logging.warning("%s: update skipped (%d in a row, %d in all; nan_max_skips %d)", what,
                            skips["in_a_row"], skips["total"], config.nan_max_skips)
            return
        why = ("nan_policy=stop" if config.nan_policy == "stop"
               else f"{skips['in_a_row']} skipped steps in a row, nan_max_skips={config.nan_max_skips}")
        writer.write(step, "train", metrics)  # the step that stopped the run, for whoever reads metrics.jsonl
        checkpointer.wait()
        good = checkpointer.latest_step()
        last = (f"the last good checkpoint is step {good} ({checkpointer.path(good)}); rerunning resumes from it"
                if good is not None else "no checkpoint was saved before it")
        advice = "set nan_policy=skip to drop such steps" if config.nan_policy == "stop" else "raise nan_max_skips"
        raise NonFiniteError(f"{what} ({why}): stopped without saving; {last}. Lower learning_rate, or {advice}")

    def finish_pending() -> None:
        nonlocal pending
        if pending is None:
            return
        step, device_metrics = pending
        pending = None
        host_metrics = jax.device_get(device_metrics)
        check_finite(step, host_metrics)
        window.add(host_metrics)
        if step == start + 1:  # the first step compiled: the rate and ETA count from here
            bar.restart(step)
        if step % config.log_every_steps == 0 or step == experiment.total_steps:
            record = window.flush()
            record["epoch"] = step / experiment.steps_per_epoch
            writer.write(step, "train", record)
            speed = f" {record['images_per_sec']:.1f} img/s" if "images_per_sec" in record else ""
            bar.extra = f"loss {record['loss']:.3f} acc {record['accuracy']:.3f}{speed}"
        bar.update(step)

    t_start = time.perf_counter()
    step = start
    with _Preemption() as preemption, _closing(checkpointer, writer):
        while step < experiment.total_steps:
            batch = sharding.global_batch(next(batches), experiment.mesh)
            state, device_metrics = experiment.train_step(state, batch)
            finish_pending()
            step += 1
            pending = (step, device_metrics)
            if step_callback is not None:
                step_callback(step, state)
            last = step == experiment.total_steps
            preempted = preemption.requested or checkpointer.reached_preemption(step)
            evaluate_now = evaluate_too and (last or (config.eval_every_steps and step % config.eval_every_steps == 0))
            periodic = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
            if evaluate_now or periodic or last or preempted:
                finish_pending()  # and the non-finite check of the step about to be saved
                paused = time.perf_counter()  # evaluations and checkpoint copies are not training time
                results = run_eval(step) if evaluate_now else None
                metrics = {"top1": results["top1"]} if results is not None else None
                checkpointer.save(step, state, meta(step), metrics=metrics, force=True)
                window.pause(time.perf_counter() - paused)
            if preempted:
                summary["preempted"] = True
                bar.clear()
                logging.warning("preempted at step %d: checkpoint saved in %s; rerun the same command to resume",
                                step, checkpointer.directory)
                break
        finish_pending()
        bar.close(step)
        checkpointer.wait()
        if evaluate_too and start >= experiment.total_steps and "eval_top1" not in summary:
            run_eval(step)  # nothing left to train: report the finished run's accuracy
        writer.flush()
        summary.update(step=step, wall_seconds=time.perf_counter() - t_start, best_step=checkpointer.best_step(),
                       skipped_steps=skips["total"])
        if window.timed_steps:
            summary.update(images_per_sec=window.images_per_sec, timed_steps=window.timed_steps)
        if jax.process_index() == 0 and os.path.exists(writer.path):
            with contextlib.suppress(Exception):  # a plot is a nicety; never lose a finished run over it
                summary["plot"] = metrics_lib.plot_curves(writer.path, os.path.join(workdir, metrics_lib.PLOT))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=float)
    return summary


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict[str, Any]:
    """Evaluates the latest (or, with eval_checkpoint="best", the best) checkpoint in `workdir` on the eval split,
    with the moving-average weights unless eval_with_ema is off."""
    check_resume_config(config, workdir)
    experiment = Experiment(config, mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    step = checkpointer.best_step() if config.eval_checkpoint == "best" else None
    if step is None and (config.eval_checkpoint == "best" or checkpointer.latest_step() is None):
        raise FileNotFoundError(f"no {config.eval_checkpoint} checkpoint in {checkpointer.directory}")
    # latest: the newest that restores (a damaged one is reported and left where it is)
    state, meta = checkpointer.restore(experiment.abstract_state, step, move_damaged=False)
    step = meta["step"]
    checkpointer.close()
    results = evaluate_variables(experiment, config, state.variables(ema=config.eval_with_ema and config.ema_decay > 0))
    results["step"] = step
    writer = metrics_lib.MetricWriter(workdir)
    writer.write(step, "eval", results)
    writer.close()
    logging.info("step %d: top-1 %.2f%%  top-5 %.2f%%%s", step, 100 * results["top1"], 100 * results["top5"],
                 statistics_note(results))
    return results
