"""Keras 3 applications on the JAX backend, timed as their users run them: what a user would pick instead of us to
run Inception in JAX. Only Inception-v3 and Inception-ResNet-v2 exist there. The worker process must be started
with KERAS_BACKEND=jax (the benchmark's command line does).

- "keras": `model.predict_on_batch` / `model.train_on_batch` of a model compiled with RMSprop (Keras jit-compiles
  both on this backend);
- "keras-stateless": `stateless_call` under `jax.jit`, and a jitted train step of `stateless_call`,
  `jax.value_and_grad` and the optimizer's `stateless_apply`, with the state donated, as Keras's guide to custom
  JAX training loops writes it.
"""

from __future__ import annotations

import resource
import statistics
import time

import jax
import numpy as np

from inception_jax.bench.results import Result
from inception_jax.bench.timing import time_steps

KERAS_APPLICATIONS = {"inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2"}
VARIANTS = ("keras", "keras-stateless")


def bench_keras(name: str, mode: str, batch: int, size: int, warmup: int, repeats: int, variant: str) -> Result:
    """Keras's model `name` on the JAX backend, inference or a train step (sparse cross-entropy on logits, RMSprop
    with the paper's lr 0.045, decay 0.9, momentum 0.9, epsilon 1.0), in the way `variant` names."""
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()!r}: start the worker with KERAS_BACKEND=jax")
    if name not in KERAS_APPLICATIONS:
        raise ValueError(f"Keras has no {name}; it has {', '.join(KERAS_APPLICATIONS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown Keras variant {variant!r}; choose one of {VARIANTS}")
    application = getattr(keras.applications, KERAS_APPLICATIONS[name])
    model = application(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 1000, batch).astype(np.int32)
    optimizer = keras.optimizers.RMSprop(learning_rate=0.045, rho=0.9, momentum=0.9, epsilon=1.0)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    if variant == "keras":
        if mode == "infer":
            step = lambda: model.predict_on_batch(images)
        else:
            model.compile(optimizer=optimizer, loss=loss_fn, jit_compile=True)
            step = lambda: model.train_on_batch(images, labels)
        start = time.perf_counter()
        step()  # traces and compiles
        compile_s = time.perf_counter() - start
    else:
        x, y = jax.numpy.asarray(images), jax.numpy.asarray(labels)
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        if mode == "infer":
            infer = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
            start = time.perf_counter()
            compiled = infer.lower(trainable, non_trainable, x).compile()
            compile_s = time.perf_counter() - start
            step = lambda: compiled(trainable, non_trainable, x).block_until_ready()
        else:
            optimizer.build(model.trainable_variables)
            holder = {"state": (trainable, non_trainable, [v.value for v in optimizer.variables])}

            def loss(t: list, n: list, x: jax.Array, y: jax.Array) -> tuple:
                logits, n = model.stateless_call(t, n, x, training=True)
                return loss_fn(y, logits), n

            def train_step(state: tuple, x: jax.Array, y: jax.Array) -> tuple:
                t, n, opt = state
                (value, n), grads = jax.value_and_grad(loss, has_aux=True)(t, n, x, y)
                t, opt = optimizer.stateless_apply(opt, grads, t)
                return (t, n, opt), value

            start = time.perf_counter()
            compiled = jax.jit(train_step, donate_argnums=0).lower(holder["state"], x, y).compile()
            compile_s = time.perf_counter() - start

            def step() -> None:
                holder["state"], value = compiled(holder["state"], x, y)
                value.block_until_ready()

    times = time_steps(step, warmup, repeats)
    median = statistics.median(times)
    result = Result(variant, name, mode, batch, size, "float32", batch / median, median * 1e3, compile_s=compile_s,
                    device=jax.devices()[0].device_kind)  # fmt: skip
    result.peak_memory_gib, result.memory_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host"
    if jax.devices()[0].platform != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            result.peak_memory_gib, result.memory_kind = stats["peak_bytes_in_use"] / 2**30, "device"
    return result
