"""BatchNorm statistics: the moving averages that training stores, and the recalibrated ones that evaluation may
use instead, each against a slow numpy reference computed layer by layer from every BatchNorm layer's input."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from helpers import max_leaf_relative_error, one_device_mesh, project_config

from inception_jax import models
from inception_jax.models.layers import BatchNorm
from inception_jax.training import bn_recalibration, checkpoints, default_config, loop, optim, sharding, steps
from inception_jax.training.metrics import read_jsonl
from inception_jax.training.state import create_train_state

MOMENTUM = 0.9


def tiny_model(**overrides):
    fields = dict(depth_multiplier=0.1, min_depth=8, num_classes=10, num_blocks=(1, 1, 1), bn_momentum=MOMENTUM)
    return models.create("inception_resnet_v1", **(fields | overrides))


def random_batches(n, size=8, image_size=75, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.uniform(-1, 1, (size, image_size, image_size, 3)).astype(np.float32),
             "label": rng.integers(0, 10, size).astype(np.int32)} for _ in range(n)]


def batchnorm_inputs(model):
    """A jitted (variables, images) -> {BatchNorm layer's path: its input} of one training-mode pass: what each
    layer computes its batch statistics from."""

    def run(variables, images):
        recorded = {}

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, BatchNorm) and context.method_name == "__call__":
                recorded["/".join(context.module.scope.path)] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return recorded

    return jax.jit(run)


def numpy_statistics(inputs):
    """{path: (mean, var)} per channel over every other axis, in float64 (var: the biased one, as BatchNorm's)."""
    out = {}
    for path, x in inputs.items():
        x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        out[path] = (x.mean(axis=0), x.var(axis=0))
    return out


def as_batch_stats(statistics, like):
    """{path: (mean, var)} laid out as the `batch_stats` tree `like`."""
    def leaf(path, value):
        keys = [k.key for k in path]
        mean, var = statistics["/".join(keys[:-1])]
        return {"mean": mean, "var": var}[keys[-1]]

    return jax.tree_util.tree_map_with_path(leaf, jax.device_get(like))


def test_stored_moving_averages_follow_flax_momentum_convention():
    """Five training steps: the stored statistics equal numpy's m <- momentum * m + (1 - momentum) * batch
    statistic (momentum weighs the old value, as flax's BatchNorm), the batch statistic taken from each layer's
    input under the step's weights."""
    model = tiny_model()
    recipe = default_config()
    schedule = optim.learning_rate_schedule(recipe, steps_per_epoch=100)
    state = jax.jit(lambda r: create_train_state(model, optim.make_optimizer(recipe, schedule), r, 75))(
        jax.random.key(0))
    train_step = jax.jit(steps.make_train_step(model, schedule))
    inputs_of = batchnorm_inputs(model)
    expected = jax.device_get(state.batch_stats)
    for batch in random_batches(5):
        statistics = numpy_statistics(inputs_of({"params": state.params, "batch_stats": state.batch_stats},
                                                batch["image"]))
        new = as_batch_stats(statistics, state.batch_stats)
        expected = jax.tree.map(lambda m, s: MOMENTUM * m + (1 - MOMENTUM) * s, expected, new)
        state, _ = train_step(state, batch)
    assert len(jax.tree.leaves(expected)) == 2 * len(statistics) > 50
    error = max_leaf_relative_error(state.batch_stats, expected)
    print(f"stored moving averages against numpy after 5 steps: {error:.1e}")
    assert error < 1e-5
    # So momentum m keeps m**n of the initial statistics after n steps: the quickstart's comment, that its momentum
    # leaves little of them after its 440 steps where the paper's 0.9997 would leave 88%, holds.
    quickstart = project_config("quickstart").model.bn_momentum
    assert quickstart**440 < 0.02 and 0.9997**440 > 0.87


@pytest.mark.parametrize("devices", [1, 8])
def test_recalibration_is_the_mean_of_each_layers_batch_statistics(devices):
    """Recalibrated statistics over 3 batches of 16 equal numpy's mean over the batches of each layer's batch mean
    and batch variance (the inputs of a training-mode pass), on 1 device and sharded over 8 (whose statistics are
    still the global batch's); the variables passed in are left as they were."""
    model = tiny_model()
    variables = models.init(model, 75)
    # Not the initial statistics, so that a pass that used them would show.
    variables["batch_stats"] = jax.tree.map(lambda s: s * 3.0 + 0.5, variables["batch_stats"])
    before = jax.device_get(variables)
    batches = random_batches(3, size=16)
    inputs_of = batchnorm_inputs(model)
    per_batch = [numpy_statistics(inputs_of(variables, b["image"])) for b in batches]
    reference = {path: tuple(np.mean([s[path][i] for s in per_batch], axis=0) for i in (0, 1)) for path in per_batch[0]}

    mesh = sharding.make_mesh(jax.devices()[:devices])
    step = jax.jit(bn_recalibration.make_statistics_step(model))
    recalibrated = bn_recalibration.recalibrate(step, variables, (sharding.global_batch(b, mesh) for b in batches), 3)
    error = max_leaf_relative_error(recalibrated["batch_stats"], as_batch_stats(reference, variables["batch_stats"]))
    print(f"recalibrated statistics against numpy on {devices} device(s): {error:.1e}")
    assert error < 1e-5
    assert recalibrated["params"] is variables["params"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), before)


def test_recalibration_refuses_too_few_batches():
    model = tiny_model()
    variables = models.init(model, 75)
    step = jax.jit(bn_recalibration.make_statistics_step(model))
    with pytest.raises(ValueError, match="asked for 3 batches, the data gave 2"):
        bn_recalibration.recalibrate(step, variables, iter(random_batches(2)), 3)
    with pytest.raises(ValueError, match="at least one batch"):
        bn_recalibration.recalibrate(step, variables, iter(random_batches(1)), 0)


@pytest.mark.slow
def test_train_and_evaluate_and_evaluate_recalibrate_and_leave_the_checkpoint(trained_run, tmp_path):
    """A copy of the session's trained run, trained on to step 8 with recalibration over 2 batches, then evaluated
    (mode=evaluate) without and with recalibration over 4: each result and metrics.jsonl name the batches, the
    recalibrated accuracy is another network's, and the checkpoint's statistics are what training saved."""
    workdir = str(trained_run.copy(tmp_path / "run"))
    states = {}
    config = trained_run.config(num_train_steps=8, bn_recalibration_batches=2)
    summary = loop.train_and_evaluate(config, workdir, mesh=one_device_mesh(),
                                      step_callback=lambda step, state: states.__setitem__(step, jax.device_get(state)))
    assert summary["step"] == 8 and summary["eval_bn_recalibration_batches"] == 2
    config = trained_run.config(mode="evaluate", num_train_steps=8)
    plain = loop.evaluate(config, workdir, mesh=one_device_mesh())
    config.bn_recalibration_batches = 4
    recalibrated = loop.evaluate(config, workdir, mesh=one_device_mesh())
    assert plain["bn_recalibration_batches"] == 0 and recalibrated["bn_recalibration_batches"] == 4
    assert recalibrated["loss"] != plain["loss"]
    evals = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "eval"]
    assert [r["bn_recalibration_batches"] for r in evals[-3:]] == [2, 0, 4]
    experiment = loop.Experiment(config, one_device_mesh())
    checkpointer = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    saved, _ = checkpointer.restore(experiment.abstract_state, 8)
    checkpointer.close()
    for part in ("batch_stats", "ema_batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(getattr(saved, part)), getattr(states[8], part))
