"""The benchmark's command line (`python -m inception_jax.bench --help`): each measurement in its own process,
settings interleaved over rounds, results printed as tables and appended as JSON lines."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import jax

from inception_jax import cpu_settings, models, ops
from inception_jax.bench import __doc__ as DOC
from inception_jax.bench.keras_jax import KERAS_APPLICATIONS, bench_keras
from inception_jax.bench.keras_jax import VARIANTS as KERAS_VARIANTS
from inception_jax.bench.ours import bench_ours, largest_fitting, train_step_bytes
from inception_jax.bench.pytorch import bench_timm
from inception_jax.bench.results import MATRIX, Result, format_round_ratios, format_table, report, summarise
from inception_jax.bench.timing import DEVICE_PEAK_FLOPS


def run_job(job: dict) -> Result:
    """One measurement, in this process."""
    if job["impl"] == "ours":
        return bench_ours(job["model"], job["mode"], job["batch"], job["size"], job["dtype"], job["warmup"],
                          job["repeats"], job["peak_flops"], remat=job.get("remat", False),
                          ops=job.get("ops", "auto"))  # fmt: skip
    if job["impl"].startswith("keras"):
        return bench_keras(job["model"], job["mode"], job["batch"], job["size"], job["warmup"], job["repeats"],
                           job["impl"])  # fmt: skip
    return bench_timm(job["model"], job["mode"], job["batch"], job["size"], job["warmup"], job["repeats"],
                      job["channels_last"], job["threads"], amp=job["amp"])  # fmt: skip


def run_isolated(job: dict) -> Result:
    """One measurement in a fresh process, so that neither framework's thread pools, caches or memory high-water
    mark affect the other's figures."""
    env = dict(os.environ)
    command = [sys.executable, "-m", "inception_jax.bench", "--worker", json.dumps(job)]
    if job["impl"].startswith("keras"):
        env["KERAS_BACKEND"] = "jax"
    if job["impl"] != "ours":
        # PyTorch and Keras run as their users run them: without our XLA flags and malloc settings (which did not
        # speed PyTorch up either).
        ours = set(cpu_settings.MALLOC_TUNABLES)
        tunables = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and t not in ours]
        if tunables:
            env["GLIBC_TUNABLES"] = ":".join(tunables)
        ours_xla = {f"{k}={v}" for k, v in cpu_settings.XLA_CPU_FLAGS.items()}
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f not in ours_xla)
        command.append(cpu_settings.OFF_FLAG)
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return Result(**json.loads(out.stdout.strip().splitlines()[-1]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inception_jax.bench", description=DOC.splitlines()[0],
                                     epilog=f"On the CPU the benchmark takes inception_jax.cpu_settings unless "
                                     f"{cpu_settings.OFF_FLAG} is given.")  # fmt: skip
    parser.add_argument("--model", default="inception_v4", choices=models.MODEL_NAMES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--mode", choices=("train", "infer"), default="infer")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--ops", type=_ops_list, default=["auto"], metavar="IMPL[,IMPL]",
        help=f"our ops' implementation(s), comma-separated, each timed as its own 'ours' row: {ops.IMPLEMENTATIONS}",
    )  # fmt: skip
    parser.add_argument("--vs-timm", action="store_true", help="also time timm's model (eager and channels_last)")
    parser.add_argument("--vs-keras", action="store_true",
                        help="also time Keras 3's application on the JAX backend (Inception-v3 and Inception-ResNet-v2 "
                        "only): predict/train_on_batch and a jitted stateless_call")  # fmt: skip
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
        help="time nothing: print the table of results saved with --json (a file of one run, or --run), else ours / "
        "best timm per setting for each run (of a history file, or each file)",
    )  # fmt: skip
    parser.add_argument(
        "--run", metavar="NAME",
        help="with --report: print only this run of a history file (its table and per-round ratios); when timing: the "
        "run name written with each --json row, so that a run can be appended to a history file",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def _ops_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in ops.IMPLEMENTATIONS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"--ops takes a comma-separated subset of {ops.IMPLEMENTATIONS}, got {text!r}")
    return values


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
            return report(args.report, args.run)
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

    keras_models = [m for m, *_ in (MATRIX if args.all else [(args.model,)]) if m in KERAS_APPLICATIONS]
    if args.vs_keras and not keras_models:
        parser.error(f"--vs-keras: Keras has no {args.model}; choose --model from {', '.join(KERAS_APPLICATIONS)}")

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
        jobs = [dict(job, impl="ours", ops=impl) for impl in args.ops]
        jobs += [dict(job, impl="timm", **v) for v in timm_variants] * args.vs_timm
        jobs += [dict(job, impl=v) for v in KERAS_VARIANTS] * (args.vs_keras and name in KERAS_APPLICATIONS)
        for round_ in range(args.rounds):
            # Every other round in reverse, so that a machine that drifts during a setting favours no one.
            for one in jobs if round_ % 2 == 0 else jobs[::-1]:
                measured = run_isolated(one)
                results.append(dataclasses.replace(measured, round=round_, rounds=args.rounds, run=args.run or ""))
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
    sys.argv = cpu_settings.apply(sys.argv)  # before jax starts its backends
    sys.exit(main())
