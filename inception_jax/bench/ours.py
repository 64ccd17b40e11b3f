"""Our side of the benchmark: the jitted inference function and train step, and their memory plans."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import models
from inception_jax.bench.results import Result
from inception_jax.bench.timing import finish, time_steps


def bench_ours(
    name: str,
    mode: str,
    batch: int,
    size: int,
    dtype: str,
    warmup: int,
    repeats: int,
    peak_flops: float | None,
    remat: bool = False,
    ops: str = "auto",
) -> Result:
    """Our jitted inference function (BatchNorm folded into the convs) or train step (forward, backward, optimizer
    update, BN update), with the ops' implementation `ops`. FLOPs are those of the reference program (direct
    convolutions), whatever `ops` runs."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
    saved = None
    if mode == "infer":
        model = models.create(name, dtype=dtype, ops=ops)
        model, variables = models.fold_batchnorm(model, models.init(model, size))
        fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
        args: tuple = (variables, images)
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - start
        reference = model.clone(ops="reference")
        flops = models.direct_flops(jax.jit(lambda v, x: reference.apply(v, x, train=False)), *args)
        step = lambda: compiled(*args).block_until_ready()
    else:
        model = models.create(name, dtype=dtype, remat=remat, ops=ops)
        saved = saved_activation_bytes(model, batch, size)
        create_state, train_step = _train_step(model, size)
        holder = {"state": jax.jit(create_state)(jax.random.key(0))}
        batch_arrays = {"image": images, "label": jnp.asarray(rng.integers(0, 1000, batch), jnp.int32)}
        start = time.perf_counter()
        compiled = train_step.lower(holder["state"], batch_arrays).compile()
        compile_s = time.perf_counter() - start
        flops = models.direct_flops(_train_step(model.clone(ops="reference"), size)[1], holder["state"], batch_arrays)

        def step() -> None:
            holder["state"], metrics = compiled(holder["state"], batch_arrays)
            jax.block_until_ready(metrics)

    times = time_steps(step, warmup, repeats)
    median = statistics.median(times)
    result = Result(
        "ours", name, mode, batch, size, dtype, batch / median, median * 1e3, compile_s=compile_s,
        device=jax.devices()[0].device_kind, remat=remat, ops=ops,
        saved_activations_gib=None if saved is None else saved / 2**30,
    )  # fmt: skip
    return finish(result, flops, peak_flops)


def _train_step(model: models.InceptionNet, size: int) -> tuple[Callable[[jax.Array], Any], Any]:
    """(rng -> fresh train state, the jitted train step with the state donated) under the paper's recipe."""
    from inception_jax.training import config as config_lib
    from inception_jax.training import optim, state, steps

    recipe = config_lib.default_config()
    schedule = optim.learning_rate_schedule(recipe, steps_per_epoch=1000)
    tx = optim.make_optimizer(recipe, schedule)
    create_state = lambda rng: state.create_train_state(model, tx, rng, size)
    return create_state, jax.jit(steps.make_train_step(model, schedule), donate_argnums=0)


def saved_activation_bytes(model: models.InceptionNet, batch: int, size: int) -> float | None:
    """Bytes the forward pass of a train step keeps for the backward pass (the activations; parameters excluded),
    from JAX's own accounting of the gradient's residuals: nothing is compiled. With ops "auto", those of the
    implementation the default backend lowers (a traced "auto" program holds both, so both would be counted)."""
    try:
        from jax._src.ad_checkpoint import saved_residuals
    except ImportError:  # private API: report nothing rather than fail the benchmark
        return None
    if model.ops == "auto":
        model = model.clone(ops="cpu" if jax.default_backend() == "cpu" else "reference")
    variables = jax.eval_shape(lambda: models.init(model, size))
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)

    def loss(params: Any, stats: Any, images: jax.Array) -> jax.Array:
        logits, _ = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                                mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})  # fmt: skip
        return jnp.sum(logits)

    residuals = saved_residuals(loss, variables["params"], variables["batch_stats"], images)
    return float(sum(np.prod(a.shape) * a.dtype.itemsize for a, where in residuals if "argument" not in where))


def train_step_bytes(name: str, batch: int, size: int, dtype: str, remat: bool) -> int:
    """Device bytes XLA plans for one compiled train step (arguments, outputs and temporaries; donated state
    counted once). Compiles, does not run."""
    create_state, train_step = _train_step(models.create(name, dtype=dtype, remat=remat), size)
    train_state = jax.eval_shape(create_state, jax.random.key(0))
    batch_arrays = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
                    "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}  # fmt: skip
    memory = train_step.lower(train_state, batch_arrays).compile().memory_analysis()
    return int(memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes)  # fmt: skip


def largest_fitting(fits: Callable[[int], bool], start: int = 8, limit: int = 1 << 14, step: int = 1) -> int:
    """Largest n in [1, limit] with fits(n), to within `step`, assuming fits is monotone (doubling from `start`,
    then bisection); 0 when not even 1 fits."""
    lo, hi = 0, None
    n = max(1, start)
    while hi is None:
        if fits(n):
            lo = n
            if n >= limit:
                return limit
            n = min(2 * n, limit)
        else:
            hi = n
    while hi - lo > max(1, step):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
