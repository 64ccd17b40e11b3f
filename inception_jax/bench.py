"""Speed of our jitted train step and inference beside timm's, in one run on the same machine.

    python -m inception_jax.bench --model inception_v4 --batch 8 --image-size 299 --mode infer --vs-timm
    python -m inception_jax.bench --all --vs-timm --json bench.jsonl
    python -m inception_jax.bench --all --vs-timm --rounds 3   # interleaved processes, medians over rounds
    python -m inception_jax.bench --report bench.jsonl [older.jsonl ...]   # tables from saved results, no timing

Reports compile time, steady-state images/s (median of timed runs after warm-up, each ending in
`block_until_ready`), peak memory (the device's where the backend reports it, else the host's peak RSS),
FLOPs per image from XLA's cost analysis, the achieved FLOP/s and MFU where a peak is known or given. Each
measurement runs in its own process; with `--rounds` the processes of a setting alternate (ours, timm, ..., then the
reverse order) and the table gives medians over rounds, followed by each round's ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import inception_jax
from inception_jax import models

# Dense bfloat16 peaks (FLOP/s) for MFU; anything else takes --peak-tflops.
DEVICE_PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12}

# The target matrix of the performance issue: (model, mode, batch, image size).
MATRIX = [
    (model, mode, batch, size)
    for model in ("inception_v4", "inception_resnet_v2")
    for mode, batch, size in (("train", 8, 299), ("train", 32, 75), ("infer", 8, 299))
]


@dataclasses.dataclass
class Result:
    impl: str
    model: str
    mode: str
    batch: int
    image_size: int
    dtype: str
    images_per_s: float
    step_ms: float
    compile_s: float | None = None
    flops_per_image: float | None = None
    achieved_tflops: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    memory_kind: str | None = None
    device: str = ""
    threads: int | None = None
    remat: bool = False
    saved_activations_gib: float | None = None
    round: int = 0
    rounds: int = 1


def time_steps(step: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `step` (which must block until its work is done), after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def peak_memory() -> tuple[float | None, str]:
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device"
    # ru_maxrss is in KiB on Linux: the whole process's high-water mark, compile included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host"


def _finish(result: Result, flops_per_step: float | None, peak_flops: float | None) -> Result:
    if flops_per_step:
        result.flops_per_image = flops_per_step / result.batch
        result.achieved_tflops = flops_per_step / (result.step_ms / 1e3) / 1e12
        if peak_flops:
            result.mfu = result.achieved_tflops * 1e12 / peak_flops
    result.peak_memory_gib, result.memory_kind = peak_memory()
    return result


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
) -> Result:
    """Our jitted inference function (BatchNorm folded into the convs) or train step (forward, backward, optimizer
    update, BN update)."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
    saved = None
    if mode == "infer":
        model = models.create(name, dtype=dtype)
        model, variables = models.fold_batchnorm(model, models.init(model, size))
        fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
        args: tuple = (variables, images)
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - start
        flops = models.direct_flops(fn, *args)
        step = lambda: compiled(*args).block_until_ready()
    else:
        model = models.create(name, dtype=dtype, remat=remat)
        saved = saved_activation_bytes(model, batch, size)
        create_state, train_step = _train_step(model, size)
        holder = {"state": jax.jit(create_state)(jax.random.key(0))}
        batch_arrays = {"image": images, "label": jnp.asarray(rng.integers(0, 1000, batch), jnp.int32)}
        start = time.perf_counter()
        compiled = train_step.lower(holder["state"], batch_arrays).compile()
        compile_s = time.perf_counter() - start
        flops = models.direct_flops(train_step, holder["state"], batch_arrays)

        def step() -> None:
            holder["state"], metrics = compiled(holder["state"], batch_arrays)
            jax.block_until_ready(metrics)

    times = time_steps(step, warmup, repeats)
    median = statistics.median(times)
    result = Result(
        "ours", name, mode, batch, size, dtype, batch / median, median * 1e3, compile_s=compile_s,
        device=jax.devices()[0].device_kind, remat=remat,
        saved_activations_gib=None if saved is None else saved / 2**30,
    )  # fmt: skip
    return _finish(result, flops, peak_flops)


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
    from JAX's own accounting of the gradient's residuals: backend-independent and nothing is compiled."""
    try:
        from jax._src.ad_checkpoint import saved_residuals
    except ImportError:  # private API: report nothing rather than fail the benchmark
        return None
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


def bench_timm(
    name: str,
    mode: str,
    batch: int,
    size: int,
    warmup: int,
    repeats: int,
    channels_last: bool,
    threads: int,
    amp: bool = False,
) -> Result:
    """timm's model of the same name in PyTorch eager mode: inference under inference_mode, or a train step with
    forward, backward and an RMSprop update."""
    import timm
    import torch

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(name, pretrained=False).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=amp)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast:
                model(x)
            sync()
    else:
        model.train()
        labels = torch.randint(0, 1000, (batch,), device=device)
        optimizer = torch.optim.RMSprop(model.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), labels)
            loss.backward()
            optimizer.step()
            sync()

    times = time_steps(step, warmup, repeats)
    median = statistics.median(times)
    label = "timm" + ("-channels_last" if channels_last else "") + ("-amp" if amp else "")
    kind = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = Result(label, name, mode, batch, size, "bfloat16" if amp else "float32", batch / median, median * 1e3,
                    device=kind, threads=threads)  # fmt: skip
    if device == "cuda":
        result.peak_memory_gib, result.memory_kind = torch.cuda.max_memory_allocated() / 2**30, "device"
    else:
        result.peak_memory_gib, result.memory_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host"
    return result


def _setting(r: Result) -> tuple:
    return (r.model, r.mode, r.batch, r.image_size)


def _best_timm(results: list[Result], key: Callable[[Result], tuple]) -> dict[tuple, float]:
    """The fastest timm mode's images/s for each `key`."""
    best: dict[tuple, float] = {}
    for r in results:
        if r.impl.startswith("timm"):
            best[key(r)] = max(best.get(key(r), 0.0), r.images_per_s)
    return best


def format_table(results: list[Result]) -> str:
    header = (
        "| impl | model | mode | batch | size | dtype | img/s | step ms | compile s | GFLOP/img | TFLOP/s | MFU "
        "| peak GiB | saved act. GiB | vs best timm |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    best_timm = _best_timm(results, _setting)
    fmt = lambda v, spec: "—" if v is None else format(v, spec)
    for r in results:
        ref = best_timm.get(_setting(r))
        ratio = f"{r.images_per_s / ref:.2f}x" if ref and r.impl == "ours" else ""
        impl = r.impl + ("+remat" if r.remat else "")
        gflop = None if r.flops_per_image is None else r.flops_per_image / 1e9
        mfu = None if r.mfu is None else 100 * r.mfu
        lines.append(
            f"| {impl} | {r.model} | {r.mode} | {r.batch} | {r.image_size} | {r.dtype} | {r.images_per_s:.2f} | "
            f"{r.step_ms:.0f} | {fmt(r.compile_s, '.1f')} | {fmt(gflop, '.2f')} | {fmt(r.achieved_tflops, '.3f')} | "
            f"{fmt(mfu, '.1f')} | {fmt(r.peak_memory_gib, '.2f')} | {fmt(r.saved_activations_gib, '.2f')} | {ratio} |"
        )
    return "\n".join(lines)


def summarise(results: list[Result]) -> list[Result]:
    """One row per implementation and setting: the median over rounds of each process's median step time (the
    largest peak memory), so that a slow spell of a shared machine during one process moves a ratio less."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((r.impl, r.model, r.mode, r.batch, r.image_size, r.dtype, r.remat), []).append(r)
    rows = []
    for group in groups.values():
        step_ms = statistics.median(r.step_ms for r in group)
        row = dataclasses.replace(group[0], step_ms=step_ms, images_per_s=group[0].batch / step_ms * 1e3,
                                  round=0, rounds=len(group))  # fmt: skip
        if row.compile_s is not None:
            row.compile_s = statistics.median(r.compile_s for r in group)
        speedup = group[0].step_ms / step_ms  # FLOP/s and MFU scale with the step time
        if row.achieved_tflops is not None:
            row.achieved_tflops *= speedup
        if row.mfu is not None:
            row.mfu *= speedup
        peaks = [r.peak_memory_gib for r in group if r.peak_memory_gib is not None]
        row.peak_memory_gib = max(peaks) if peaks else None
        rows.append(row)
    return rows


def ratios_by_round(results: list[Result]) -> dict[tuple, list[float]]:
    """Ours / the best timm mode within each round, per setting: the spread the summary's ratio hides."""
    in_round = lambda r: (*_setting(r), r.round)
    best = _best_timm(results, in_round)
    out: dict[tuple, list[float]] = {}
    for r in results:
        if r.impl == "ours" and in_round(r) in best:
            out.setdefault(_setting(r), []).append(r.images_per_s / best[in_round(r)])
    return out


def format_round_ratios(results: list[Result]) -> str:
    """One line per setting: ours / the best timm mode in each round, the spread a median over rounds hides."""
    return "\n".join(
        f"{name} {mode} b{batch}@{size}: ours / best timm by round " + ", ".join(f"{q:.2f}x" for q in ratios)
        for (name, mode, batch, size), ratios in ratios_by_round(results).items()
    )


def load_results(path: str) -> list[Result]:
    """The results a run appended to a `--json` file. Files written before rounds were recorded hold several runs
    of the same settings one after another: a setting's k-th measurement of an implementation is its round k."""
    fields = {f.name for f in dataclasses.fields(Result)}
    results: list[Result] = []
    seen: dict[tuple, int] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                result = Result(**{k: v for k, v in row.items() if k in fields})
            except (json.JSONDecodeError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{number} is not a benchmark result written by --json ({e})") from e
            if "round" not in row:
                key = (result.impl, *_setting(result), result.dtype, result.remat)
                result.round = seen.get(key, 0)
                seen[key] = result.round + 1
            results.append(result)
    if not results:
        raise ValueError(f"{path} holds no benchmark results")
    rounds = 1 + max(r.round for r in results)
    return [dataclasses.replace(r, rounds=max(r.rounds, rounds)) for r in results]


def ratio_history(files: dict[str, list[Result]]) -> str:
    """One row per results file: ours / the best timm mode for each setting of the matrix (medians over rounds
    when a file holds several), in the order given."""
    settings = [s for s in MATRIX if any(_setting(r) == s for rows in files.values() for r in rows)]
    settings += sorted({_setting(r) for rows in files.values() for r in rows} - set(settings))
    short = {"inception_v4": "v4", "inception_resnet_v2": "IR-v2"}
    names = [f"{short.get(m, m)} {mode} b{b}@{size}" for m, mode, b, size in settings]
    lines = ["| results | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for name, rows in files.items():
        summary = summarise(rows)
        best = _best_timm(summary, _setting)
        ours = {_setting(r): r.images_per_s for r in summary if r.impl == "ours"}
        cells = [f"{ours[s] / best[s]:.2f}x" if s in ours and s in best else "—" for s in settings]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(paths: list[str]) -> int:
    """Prints the tables of saved results: one file's table (and per-round ratios), or the ratio history of several."""
    files = {path: load_results(path) for path in paths}
    if len(files) == 1:
        results = next(iter(files.values()))
        print(format_table(summarise(results)))
        if results[0].rounds > 1:
            print(format_round_ratios(results))
    else:
        print(ratio_history(files))
    return 0


def run_job(job: dict) -> Result:
    """One measurement, in this process."""
    if job["impl"] == "ours":
        return bench_ours(job["model"], job["mode"], job["batch"], job["size"], job["dtype"], job["warmup"],
                          job["repeats"], job["peak_flops"], remat=job.get("remat", False))  # fmt: skip
    return bench_timm(job["model"], job["mode"], job["batch"], job["size"], job["warmup"], job["repeats"],
                      job["channels_last"], job["threads"], amp=job["amp"])  # fmt: skip


def run_isolated(job: dict) -> Result:
    """One measurement in a fresh process, so that neither framework's thread pools, caches or memory high-water
    mark affect the other's figures."""
    env = dict(os.environ)
    if job["impl"] == "timm":
        # PyTorch runs as its users run it: without our malloc settings (which did not speed it up either).
        env["INCEPTION_JAX_KEEP_MALLOC"] = "1"
        ours = set(inception_jax.MALLOC_TUNABLES)
        tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and t not in ours]
        if tunables:
            env["GLIBC_TUNABLES"] = ":".join(tunables)
    out = subprocess.run(
        [sys.executable, "-m", "inception_jax.bench", "--worker", json.dumps(job)],
        check=True, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    return Result(**json.loads(out.stdout.strip().splitlines()[-1]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inception_jax.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="inception_v4", choices=models.MODEL_NAMES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--mode", choices=("train", "infer"), default="infer")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--vs-timm", action="store_true", help="also time timm's model (eager and channels_last)")
    parser.add_argument("--timm-amp", action="store_true", help="time timm under bfloat16 autocast too")
    parser.add_argument(
        "--all", action="store_true", help="run the matrix: v4 and IR-v2 x (train b8@299, b32@75, infer b8@299)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run each setting's processes this many times, interleaved (ours, timm..., then the reverse order), and "
        "report medians over rounds",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="PyTorch threads")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU when not known")
    parser.add_argument("--remat", action="store_true", help="train with per-block rematerialisation")
    parser.add_argument(
        "--max-batch", action="store_true",
        help="instead of timing, find the largest train batch whose compiled step fits --memory-gib (default: the "
        "device's memory), with and without --remat",
    )  # fmt: skip
    parser.add_argument("--memory-gib", type=float, help="memory budget for --max-batch")
    parser.add_argument("--batch-step", type=int, default=8, help="resolution of --max-batch's search")
    parser.add_argument("--json", help="append results as JSON lines to this file")
    parser.add_argument(
        "--report", nargs="+", metavar="FILE",
        help="time nothing: print the table of results saved with --json (one file), or ours / best timm per setting "
        "for each of several files",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(dataclasses.asdict(run_job(json.loads(args.worker)))))
        return 0
    if args.report:
        missing = [p for p in args.report if not os.path.isfile(p)]
        if missing:
            parser.error(f"--report: no such file: {', '.join(missing)}")
        try:
            return report(args.report)
        except ValueError as e:
            parser.error(str(e))
    if args.batch < 1 or args.image_size < models.MIN_INPUT_SIZE:
        parser.error(f"--batch must be >= 1 and --image-size >= {models.MIN_INPUT_SIZE}")
    if args.rounds < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--rounds and --repeats must be >= 1 and --warmup >= 0")
    if args.vs_timm:
        try:
            import timm  # noqa: F401
        except ImportError:
            parser.error("--vs-timm needs timm and PyTorch: pip install -e '.[parity]'")

    if args.max_batch:
        return report_max_batch(args)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else DEVICE_PEAK_FLOPS.get(jax.devices()[0].device_kind)
    common = dict(dtype=args.dtype, warmup=args.warmup, repeats=args.repeats, peak_flops=peak,
                  threads=args.threads, amp=False, channels_last=False, remat=args.remat)  # fmt: skip
    timm_variants = [dict(channels_last=False), dict(channels_last=True)]
    if args.timm_amp:
        timm_variants.append(dict(channels_last=True, amp=True))
    results: list[Result] = []
    for name, mode, batch, size in MATRIX if args.all else [(args.model, args.mode, args.batch, args.image_size)]:
        print(f"# {name} {mode} batch {batch} at {size}x{size}", file=sys.stderr, flush=True)
        job = dict(common, model=name, mode=mode, batch=batch, size=size)
        jobs = [dict(job, impl="ours")] + [dict(job, impl="timm", **v) for v in timm_variants] * args.vs_timm
        for round_ in range(args.rounds):
            # Every other round in reverse, so that a machine that drifts during a setting favours no one.
            for one in jobs if round_ % 2 == 0 else jobs[::-1]:
                results.append(dataclasses.replace(run_isolated(one), round=round_, rounds=args.rounds))
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(dataclasses.asdict(results[-1])) + "\n")
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} (ours)")  # fmt: skip
    print(format_table(summarise(results)))
    if args.rounds > 1:
        print(format_round_ratios(results))
    return 0


def report_max_batch(args: argparse.Namespace) -> int:
    """Prints (and appends as JSON) the largest train batch that fits the budget, without and with remat."""
    if args.memory_gib:
        budget = args.memory_gib * 2**30
    else:
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" not in stats:
            print(f"{jax.devices()[0].platform} reports no memory limit: pass --memory-gib", file=sys.stderr)
            return 2
        budget = stats["bytes_limit"]
    for remat in (False, True):
        fits = lambda n, remat=remat: train_step_bytes(args.model, n, args.image_size, args.dtype, remat) <= budget
        batch = largest_fitting(fits, start=args.batch, step=args.batch_step)
        row = dict(model=args.model, image_size=args.image_size, dtype=args.dtype, remat=remat,
                   budget_gib=budget / 2**30, max_batch=batch, device=jax.devices()[0].device_kind)  # fmt: skip
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
