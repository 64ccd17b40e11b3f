"""Residual-scale sweep (paper §3.3): one training per scale, all from one base config, then a table and a plot of
final and best accuracy, divergence/death step and dead fraction against the scale, and of each run's training loss
and dead channels against the step.

    python experiments/residual_scale_sweep.py --model inception_resnet_v2 --scales 0.05,0.1,0.2,0.3,0.5,1.0 \
        --config configs/quickstart.py --workdir runs/sweep [--dry-run] [--config.num_epochs=4 ...]

Each run lives in `<workdir>/scale_<s>` with `model.residual_scales = (s, s, s)`; extra `--config.*` flags go to
every run. `--dry-run` prints the commands (to submit as separate jobs on a cluster) instead of running them;
`--summarize-only` only rebuilds the table and plot from the workdirs. A rerun skips the runs that finished and resumes
the others; with `--results DIR` each finished run's metrics.jsonl is copied there as it finishes (to commit at
once), and the summary is written there.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from launch import finished, fmt, launch, main_command, read_run, report_failures

from inception_jax.training.config import load_config_file

RESIDUAL_MODELS = ("inception_resnet_v1", "inception_resnet_v2")


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales must be comma-separated numbers, got {text!r}") from None
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"--scales must be positive numbers, got {text!r}")
    return scales


def run_dir(root: Path, scale: float) -> Path:
    return root / f"scale_{scale:g}"


def commands(args: argparse.Namespace, extra: list[str]) -> list[list[str]]:
    return [
        main_command(
            args.config, run_dir(args.workdir, s),
            [f"--config.model.name={args.model}", f"--config.model.residual_scales=({s},{s},{s})", *extra],
        )
        for s in args.scales
    ]  # fmt: skip


def summarize(root: Path, scales: list[float]) -> list[dict]:
    """Writes `sweep.md`, `sweep.json` and `sweep.png` under root (a workdir of runs, or a results directory of
    scale_<s>.metrics.jsonl files); returns one row per scale."""
    kept = lambda s: run_dir(root, s) if run_dir(root, s).is_dir() else root / f"{run_dir(root, s).name}.metrics.jsonl"
    rows = [{"scale": s, **read_run(kept(s))} for s in scales]
    lines = [
        "| scale | final top-1 % | best top-1 % | final top-5 % | diverged at step | died at step | last dead frac. "
        "| all channels dead at step | last dead channels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("missing"):
            lines.append(f"| {r['scale']:g} | not run | | | | | | | |")
            continue
        lines.append(
            f"| {r['scale']:g} | {fmt(r['final_top1'])} | {fmt(r['best_top1'])} | {fmt(r['final_top5'])} | "
            f"{fmt(r['diverged_step'], 'd')} | {fmt(r['died_step'], 'd')} | {fmt(r['last_dead_fraction'], '.3f')} | "
            f"{fmt(r['channels_died_step'], 'd')} | {fmt(r['last_dead_channels'], '.3f')} |"
        )
    (root / "sweep.md").write_text("\n".join(lines) + "\n")
    compact = [{k: v for k, v in r.items() if k not in ("train", "eval")} for r in rows]
    (root / "sweep.json").write_text(json.dumps(compact, indent=2) + "\n")
    plot(rows, root / "sweep.png")
    plot_curves(rows, root / "sweep_curves.png")
    return rows


def curves(row: dict) -> dict[str, list[float]]:
    """A run's training curves by step: loss, dead channels (the last feature map's channels zero for the whole
    batch) and dead fraction; NaN where a record lacks one."""
    keys = ("step", "loss", "dead_channels", "dead_fraction")
    return {key: [r.get(key, math.nan) for r in row["train"]] for key in keys}


def plot_curves(rows: list[dict], path: Path) -> None:
    """Training loss, dead channels and dead fraction against the step, one line per scale; a dotted line marks a
    death (all channels zero) and a dashed one a divergence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for row in (r for r in rows if not r.get("missing")):
        curve = curves(row)
        for ax, key in zip(axes, ("loss", "dead_channels", "dead_fraction"), strict=True):
            line, = ax.plot(curve["step"], curve[key], label=f"scale {row['scale']:g}")
            for step, style in ((row["channels_died_step"], ":"), (row["diverged_step"], "--")):
                if step is not None:
                    ax.axvline(step, color=line.get_color(), linestyle=style)
    labels = ("training loss", "dead channels (zero for the whole batch)", "dead fraction (zero activations)")
    for ax, label in zip(axes, labels, strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend()
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if not r.get("missing")]
    scales = [r["scale"] for r in done]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(scales, [r["final_top1"] for r in done], "o-", label="final top-1")
    axes[0].plot(scales, [r["best_top1"] for r in done], "s--", label="best top-1")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend()
    axes[1].plot(scales, [r["last_dead_fraction"] for r in done], "o-")
    axes[1].set_ylabel("dead fraction (last train log)")
    failed = [(r["scale"], r["died_step"] if r["died_step"] is not None else r["diverged_step"]) for r in done]
    failed = [(scale, step) for scale, step in failed if step is not None]
    for scale, step in failed:
        axes[2].bar(str(scale), step)
    if not failed:
        axes[2].text(0.5, 0.5, "no run died or diverged", transform=axes[2].transAxes, ha="center")
    axes[2].set_ylabel("step of death / divergence (none = bar absent)")
    for ax in axes:
        ax.set_xlabel("residual scale")
        if ax is not axes[2]:
            ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="inception_resnet_v2", choices=RESIDUAL_MODELS)
    parser.add_argument("--scales", type=parse_scales, default=parse_scales("0.05,0.1,0.2,0.3,0.5,1.0"))
    parser.add_argument("--config", default="configs/quickstart.py", help="base config for every run")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--results", type=Path, help="copy each finished run's metrics.jsonl here as it finishes "
                                                     "(scale_<s>.metrics.jsonl), and write the summary here")
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments {bad}: only --config.<field>=<value> overrides pass through")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config} does not exist")
    if "residual_scales" not in load_config_file(args.config).model:
        # Overrides cannot add fields: every run would fail on --config.model.residual_scales.
        parser.error(f"--config {args.config} has no model.residual_scales to sweep: start from a residual network's "
                     "config (configs/quickstart.py, configs/inception_resnet_v2.py) or set "
                     "config.model.residual_scales in it")  # fmt: skip
    failed, launched = [], 0
    for scale, command in zip(args.scales, commands(args, extra), strict=True):
        workdir = run_dir(args.workdir, scale)
        if args.summarize_only:
            pass
        elif finished(workdir) and not args.dry_run:
            print(f"scale {scale:g}: finished ({workdir}/summary.json); skipped. Delete that file to train it again.")
        else:
            launched += 1
            failed += launch([command], args.dry_run, args.workdir / "logs")
        if args.results and not args.dry_run and finished(workdir):
            args.results.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workdir / "metrics.jsonl", args.results / f"{workdir.name}.metrics.jsonl")
            print(f"scale {scale:g}: kept {args.results / f'{workdir.name}.metrics.jsonl'}", flush=True)
    if args.dry_run:
        return 0
    root = args.results or args.workdir
    summarize(root, args.scales)
    print((root / "sweep.md").read_text())
    return report_failures(failed, launched)


if __name__ == "__main__":
    sys.exit(main())
