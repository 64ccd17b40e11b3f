"""Training: the optimiser against a numpy TF1 RMSProp, the schedule, the decay mask, the EMA, BN statistics per
device, 8 devices vs 1, FSDP, checkpoints (keep-best, SIGTERM, exact resume) and a short quickstart run."""

import json
import os
import signal
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import max_leaf_relative_error, one_device_mesh, project_config, tiny_config

from inception_jax.training import checkpoints, default_config, loop, optim, sharding, steps
from inception_jax.training.state import TrainState


def random_batch(size, image_size=75, num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(-1, 1, (size, image_size, image_size, 3)).astype(np.float32),
        "label": rng.integers(0, num_classes, size).astype(np.int32),
    }


# --- optimiser ----------------------------------------------------------------------------------------------------


def tf1_rmsprop_numpy(grad_fn, w, lrs, decay=0.9, momentum=0.9, eps=1.0, weight_decay=0.0, mask=None, clip=0.0):
    """TF1's ApplyRMSProp kernel (training_ops.cc) in float64, after slim's coupled L2 and global-norm clipping:
    ms += (g^2 - ms) * (1 - decay); mom = momentum * mom + lr * g / sqrt(ms + eps); w -= mom. ms starts at 1."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    ms = {k: np.ones_like(v) for k, v in w.items()}
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    for lr in lrs:
        g = grad_fn(w)
        g = {k: g[k] + (weight_decay * w[k] if mask is None or mask[k] else 0.0) for k in w}
        if clip > 0:
            norm = np.sqrt(sum(np.sum(v**2) for v in g.values()))
            g = {k: v * min(1.0, clip / norm) for k, v in g.items()}
        for k in w:
            ms[k] = ms[k] + (g[k] ** 2 - ms[k]) * (1 - decay)
            mom[k] = momentum * mom[k] + lr * g[k] / np.sqrt(ms[k] + eps)
            w[k] = w[k] - mom[k]
    return w


def toy_problem(seed=0):
    """Least squares: w = {'kernel': [6, 3], 'bias': [3]}; loss = 0.5 * mean ||x W + b - y||^2."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 6))
    y = rng.normal(size=(32, 3)) * 3
    w0 = {"kernel": rng.normal(size=(6, 3)).astype(np.float32), "bias": np.zeros(3, np.float32)}

    def numpy_grad(w):
        r = (x @ w["kernel"] + w["bias"] - y) / len(x)
        return {"kernel": x.T @ r, "bias": r.sum(0)}

    def loss(w):
        return 0.5 * jnp.mean(jnp.sum((jnp.asarray(x, jnp.float32) @ w["kernel"] + w["bias"] - y) ** 2, -1))

    return w0, numpy_grad, loss


def run_optax(tx, w0, loss, num_steps):
    params = jax.tree.map(jnp.asarray, w0)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(num_steps):
        params, opt_state = step(params, opt_state)
    return params


def test_rmsprop_matches_tf1_numpy_over_50_steps():
    w0, numpy_grad, loss = toy_problem()
    # A staircase schedule that halves every 10 steps: the learning rate must sit inside the momentum.
    schedule = lambda step: 0.045 * 0.5 ** jnp.floor_divide(step, 10)
    lrs = [0.045 * 0.5 ** (t // 10) for t in range(50)]
    expected = tf1_rmsprop_numpy(numpy_grad, w0, lrs)
    ours = run_optax(optim.tf1_rmsprop(schedule), w0, loss, 50)
    for key in w0:
        np.testing.assert_allclose(ours[key], expected[key], rtol=1e-6, atol=1e-6)
    moved = max(np.max(np.abs(expected[k] - w0[k])) for k in w0)
    assert moved > 0.1  # the comparison is not between two copies of the starting point
    # Plain optax.rmsprop (ms starts at 0, eps 1e-8) is a different optimiser: the test can tell them apart.
    plain = run_optax(optax.rmsprop(schedule, momentum=0.9), w0, loss, 50)
    assert np.max(np.abs(plain["kernel"] - expected["kernel"])) > 1e-2


def test_full_optimizer_chain_matches_tf1_numpy():
    """make_optimizer = coupled L2 on the masked leaves -> global-norm clipping -> TF1 RMSProp."""
    w0, numpy_grad, loss = toy_problem(seed=1)
    config = default_config()
    config.weight_decay, config.grad_clip_norm = 0.05, 0.5  # both bite on this problem
    steps_per_epoch = 5
    schedule = optim.learning_rate_schedule(config, steps_per_epoch)
    tx = optim.make_optimizer(config, schedule)
    lrs = [float(schedule(t)) for t in range(50)]
    assert lrs[9] == pytest.approx(0.045) and lrs[10] == pytest.approx(0.045 * 0.94)
    expected = tf1_rmsprop_numpy(numpy_grad, w0, lrs, weight_decay=0.05, clip=0.5,
                                 mask={"kernel": True, "bias": False})
    ours = run_optax(tx, w0, loss, 50)
    for key in w0:
        np.testing.assert_allclose(ours[key], expected[key], rtol=1e-6, atol=1e-6)


def test_momentum_optimizer_is_tf1_momentum():
    w0, numpy_grad, loss = toy_problem(seed=2)
    config = default_config()
    config.optimizer, config.weight_decay, config.grad_clip_norm = "momentum", 0.0, 0.0
    tx = optim.make_optimizer(config, lambda step: 0.01)
    w = {k: v.astype(np.float64) for k, v in w0.items()}
    accum = {k: np.zeros_like(v) for k, v in w.items()}
    for _ in range(20):  # TF1 ApplyMomentum: accum = m * accum + g; w -= lr * accum
        g = numpy_grad(w)
        for k in w:
            accum[k] = 0.9 * accum[k] + g[k]
            w[k] = w[k] - 0.01 * accum[k]
    ours = run_optax(tx, w0, loss, 20)
    for key in w0:
        np.testing.assert_allclose(ours[key], w[key], rtol=1e-5, atol=1e-6)


def test_learning_rate_schedule_at_epoch_boundaries():
    config = default_config()
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=100)
    lr = lambda step: float(schedule(step))
    assert lr(0) == pytest.approx(0.045)
    assert lr(199) == pytest.approx(0.045)  # still epoch 1.99
    assert lr(200) == pytest.approx(0.045 * 0.94)  # epoch 2: first decay
    assert lr(399) == pytest.approx(0.045 * 0.94)
    assert lr(400) == pytest.approx(0.045 * 0.94**2)
    assert lr(100 * 100) == pytest.approx(0.045 * 0.94**50, rel=1e-5)

    config.warmup_epochs, config.lr_scaling, config.batch_size = 1.0, "linear", 1024
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=100)
    base = 0.045 * 1024 / 256
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(base / 2)
    assert float(schedule(100)) == pytest.approx(base)
    assert float(schedule(200)) == pytest.approx(base * 0.94)
    config.lr_scaling = "sqrt"
    assert optim.scaled_learning_rate(config) == pytest.approx(0.045 * 2)


def test_weight_decay_mask_on_a_real_network():
    from inception_jax import models

    model = models.create("inception_resnet_v2", num_classes=10, depth_multiplier=0.1, min_depth=8,
                          num_blocks=(1, 1, 1), aux_logits=True, bn_scale=True)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 75, 75, 3))))["params"]
    flat = {"/".join(getattr(k, "key", str(k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(params))[0]}
    flat_biases = {"/".join(getattr(k, "key", str(k)) for k in path): v for path, v in
                   jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(params, decay_biases=True))[0]}
    kernels = [k for k in flat if k.endswith("kernel")]
    bn = [k for k in flat if "/bn/" in k]
    conv_biases = [k for k in flat if k.endswith("bias") and "/bn/" not in k]
    assert len(kernels) > 40 and len(bn) > 40 and conv_biases
    assert any(k.startswith("Logits/") for k in conv_biases) and any("expand" in k for k in conv_biases)
    assert all(flat[k] for k in kernels) and not any(flat[k] for k in bn) and not any(flat[k] for k in conv_biases)
    assert all(flat_biases[k] for k in kernels + conv_biases) and not any(flat_biases[k] for k in bn)


def test_ema_decay_follows_tf_warmup():
    assert float(optim.ema_decay(0, 0.9999)) == pytest.approx(0.1)
    assert float(optim.ema_decay(90, 0.9999)) == pytest.approx(91 / 100)
    assert float(optim.ema_decay(10**6, 0.9999)) == pytest.approx(0.9999)
    avg = optim.ema_update({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, jnp.float32(0.75))
    np.testing.assert_allclose(avg["w"], 0.75)


# --- BN statistics, sharding ----------------------------------------------------------------------------------------


class BNToy(nn.Module):
    """BatchNorm straight on the input, so that its statistics can be computed by hand."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5, name="bn")(x)
        x = nn.relu(x)
        self.sow("intermediates", "features", x)
        return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


def bn_toy_state():
    model = BNToy()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
    tx = optax.sgd(0.1)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                       batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                       ema_params=variables["params"], ema_batch_stats=variables["batch_stats"],
                       rng=jax.random.key_data(jax.random.key(1)), tx=tx)
    return model, jax.device_get(state)


def test_per_device_bn_statistics_are_per_device_and_independent_of_sharding():
    model, state = bn_toy_state()
    rng = np.random.default_rng(0)
    # Each group of 2 rows gets its own offset, so per-group and global variances differ a lot.
    images = (rng.normal(size=(16, 4, 4, 2)) + np.repeat(np.arange(8) * 3.0, 2)[:, None, None, None]).astype(np.float32)
    batch = {"image": images, "label": rng.integers(0, 3, 16).astype(np.int32)}
    results = {}
    for name, devices, groups in [("8 devices per device", 8, 8), ("1 device, 8 groups", 1, 8), ("global", 8, 1)]:
        mesh = sharding.make_mesh(jax.devices()[:devices])
        step = steps.make_train_step(model, lambda s: 0.1, ema_decay=0.0, bn_groups=groups, mesh=mesh)
        shard = sharding.replicated(mesh)
        new_state, _ = jax.jit(step, in_shardings=(shard, sharding.data_sharding(mesh)))(
            jax.device_put(state, shard), sharding.global_batch(batch, mesh))
        results[name] = jax.device_get(new_state)
    per_device = results["8 devices per device"]
    groups = images.reshape(8, 2 * 4 * 4, 2)
    np.testing.assert_allclose(per_device.batch_stats["bn"]["mean"], 0.5 * groups.mean(1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(per_device.batch_stats["bn"]["var"], 0.5 + 0.5 * groups.var(1).mean(0), rtol=1e-4)
    np.testing.assert_allclose(results["global"].batch_stats["bn"]["var"], 0.5 + 0.5 * images.reshape(-1, 2).var(0),
                               rtol=1e-4)
    assert max_leaf_relative_error(per_device.params, results["1 device, 8 groups"].params) < 1e-5
    assert max_leaf_relative_error(per_device.batch_stats, results["1 device, 8 groups"].batch_stats) < 1e-5
    assert max_leaf_relative_error(per_device.params, results["global"].params) > 1e-3


def test_train_step_reads_a_network_whose_last_layer_is_zero_as_dead():
    """The per-channel death figure through a real train step: the last conv unit's BN shift forced far below zero
    leaves its ReLU all zeros, 1.0; the same network untouched reads below 1."""
    from inception_jax import models
    from inception_jax.training.state import create_train_state

    model = models.create("inception_resnet_v2", depth_multiplier=0.1, min_depth=8, num_blocks=(1, 1, 1),
                          aux_logits=False, num_classes=3)  # fmt: skip
    tx = optax.sgd(0.0)
    state = create_train_state(model, tx, jax.random.key(0), 75)
    step = jax.jit(steps.make_train_step(model, lambda s: 0.0, ema_decay=0.0))
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (4, 75, 75, 3)).astype(np.float32), "label": np.arange(4) % 3}
    _, alive = step(state, batch)
    params = jax.tree.map(lambda x: x, state.params)
    params["Conv2d_7b_1x1"]["bn"]["bias"] = jnp.full_like(params["Conv2d_7b_1x1"]["bn"]["bias"], -1e4)
    _, dead = step(state.replace(params=params), batch)
    assert float(alive["dead_channels"]) < 1.0 and float(dead["dead_channels"]) == 1.0
    assert float(dead["dead_fraction"]) == 1.0


def test_fsdp_spec_splits_large_arrays_only():
    assert sharding.fsdp_spec((3, 3, 64, 128), 8) == jax.sharding.PartitionSpec(None, None, None, "data")
    assert sharding.fsdp_spec((1536, 1000), 8) == jax.sharding.PartitionSpec("data", None)
    assert sharding.fsdp_spec((7, 7, 3, 33), 8) == jax.sharding.PartitionSpec()  # small
    assert sharding.fsdp_spec((999, 37), 8) == jax.sharding.PartitionSpec()  # indivisible
    assert sharding.fsdp_spec((1536, 1000), 1) == jax.sharding.PartitionSpec()


@pytest.mark.slow
def test_one_step_on_8_devices_equals_one_step_on_1_device():
    """Global BN, same global batch: replicated on 8 devices and FSDP on 8 devices match 1 device."""
    config = tiny_config(fsdp_min_size=256)  # the tiny network has no array of the default 16k elements
    mesh1 = sharding.make_mesh(jax.devices()[:1])
    one = loop.Experiment(config, mesh1)
    initial = jax.device_get(one.init_state(jax.random.key(0)))
    batch = random_batch(config.batch_size)
    results = {}
    for name, devices, fsdp in [("1 device", 1, False), ("8 devices", 8, False), ("8 devices FSDP", 8, True)]:
        config.fsdp = fsdp
        mesh = sharding.make_mesh(jax.devices()[:devices])
        experiment = one if devices == 1 else loop.Experiment(config, mesh)
        state = jax.device_put(initial.replace(tx=experiment.tx), experiment.state_shardings)
        if fsdp:
            specs = [s.spec for s in jax.tree.leaves(experiment.state_shardings.params)]
            assert any(spec != jax.sharding.PartitionSpec() for spec in specs)
        new_state, metrics = experiment.train_step(state, sharding.global_batch(batch, mesh))
        if fsdp:
            assert any(len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated
                       for leaf in jax.tree.leaves(new_state.params))
        results[name] = jax.device_get((new_state, metrics))
    reference_state, reference_metrics = results["1 device"]
    assert max_leaf_relative_error(reference_state.params, initial.params) > 1e-3  # the step did something
    for name in ("8 devices", "8 devices FSDP"):
        state, metrics = results[name]
        assert int(state.step) == 1
        np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"], rtol=1e-5)
        for part in ("params", "batch_stats", "opt_state", "ema_params"):
            assert max_leaf_relative_error(getattr(state, part), getattr(reference_state, part)) < 1e-4, (name, part)


# --- checkpoints and the loop ---------------------------------------------------------------------------------------


def test_checkpointer_keeps_last_k_and_best(tmp_path):
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"), keep=2)
    accuracy = {2: 0.9, 4: 0.5, 6: 0.7}
    for step in range(1, 7):
        state = {"w": jnp.full((3,), float(step))}
        metrics = {"top1": accuracy[step]} if step in accuracy else None
        ckpt.save(step, state, {"step": step, "data_position": step}, metrics=metrics)
    ckpt.wait()
    assert sorted(ckpt.all_steps()) == [2, 5, 6]
    assert ckpt.best_step() == 2
    abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=sharding.replicated(sharding.make_mesh()))}
    restored, meta = ckpt.restore(abstract, step=2)
    np.testing.assert_array_equal(restored["w"], 2.0)
    assert meta == {"step": 2, "data_position": 2}
    ckpt.close()


def read_tensorboard_tags(directory):
    """Tags in the event files under `directory`, read straight from the TFRecord framing."""
    from tensorboard.compat.proto.event_pb2 import Event

    tags = set()
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            tags.update(v.tag for v in event.summary.value)
            offset += 12 + length + 4
    return tags


@pytest.mark.slow
def test_quickstart_lowers_the_loss(tmp_path):
    config = project_config("quickstart")
    config.num_train_steps, config.log_every_steps, config.mode = 40, 10, "train"
    config.checkpoint_every_steps = 0
    # One device: 8 simulated ones on a 2-core CPU only slow it down (sharding has its own tests above).
    summary = loop.train_and_evaluate(config, str(tmp_path), mesh=sharding.make_mesh(jax.devices()[:1]))
    assert summary["step"] == 40 and not summary["preempted"] and summary["images_per_sec"] > 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert train[-1]["loss"] < 0.9 * train[0]["loss"], [r["loss"] for r in train]
    for key in ("loss", "accuracy", "learning_rate", "grad_norm", "images_per_sec", "dead_fraction"):
        assert all(np.isfinite(r[key]) for r in train), key
    assert {"train/loss", "train/grad_norm", "train/images_per_sec"} <= read_tensorboard_tags(tmp_path / "tensorboard")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert os.listdir(tmp_path / "checkpoints") == ["40"]  # the final checkpoint


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(trained_run, tmp_path):
    """SIGTERM at step 3 saves a checkpoint of step 3 only; rerunning resumes there and ends where the session's
    uninterrupted run of the same config ended (`trained_run`, on the same one-device mesh)."""
    config = tiny_config(mode="train_and_evaluate")
    finals = {}

    def preempt_at_3(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        if step == config.num_train_steps:
            finals["resumed"] = jax.device_get(state)

    handler = signal.getsignal(signal.SIGTERM)
    first = loop.train_and_evaluate(config, str(tmp_path / "b"), mesh=one_device_mesh(), step_callback=preempt_at_3)
    assert first["preempted"] and first["step"] == 3
    assert os.listdir(tmp_path / "b" / "checkpoints") == ["3"]
    assert signal.getsignal(signal.SIGTERM) is handler  # the loop put the previous handler back

    resumed = loop.train_and_evaluate(config, str(tmp_path / "b"), mesh=one_device_mesh(), step_callback=preempt_at_3)
    assert resumed["step"] == 6 and not resumed["preempted"]
    a, b = trained_run.state(6), finals["resumed"]
    assert int(a.step) == int(b.step) == 6
    for part in ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats", "rng"):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), getattr(a, part),
                     getattr(b, part))
    uninterrupted = trained_run.final_eval()
    assert uninterrupted["step"] == 6
    assert resumed["eval_top1"] == pytest.approx(uninterrupted["top1"])

    # Evaluating the finished workdir gives the run's own final accuracy (EMA weights restored).
    config.mode = "evaluate"
    evaluated = loop.evaluate(config, str(trained_run.copy(tmp_path / "a")), mesh=one_device_mesh())
    assert evaluated["step"] == 6
    assert evaluated["top1"] == pytest.approx(uninterrupted["top1"])
    assert evaluated["num_examples"] == 360


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_master_weights():
    config = tiny_config()
    mesh = sharding.make_mesh(jax.devices()[:1])
    batch = sharding.global_batch(random_batch(config.batch_size), mesh)
    results = {}
    for dtype in ("float32", "bfloat16"):
        config.model.dtype = dtype
        experiment = loop.Experiment(config, mesh)
        state = experiment.init_state(jax.random.key(0))
        new_state, metrics = experiment.train_step(state, batch)
        results[dtype] = jax.device_get((new_state, metrics))
    state, metrics = results["bfloat16"]
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.ema_params, state.opt_state, state.batch_stats))}
    assert dtypes <= {np.dtype(np.float32), np.dtype(np.int32)}
    assert np.isfinite(metrics["loss"])
    # Same initial weights and batch: bfloat16 rounding moves the loss by well under 5%.
    assert metrics["loss"] == pytest.approx(results["float32"][1]["loss"], rel=0.05)
    assert metrics["loss"] != results["float32"][1]["loss"]  # it did compute in bfloat16
