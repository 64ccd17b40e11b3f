"""Pure vs residual Inception (paper Figs. 21-26): Inception-v3 vs Inception-ResNet-v1 and Inception-v4 vs
Inception-ResNet-v2, trained with the same budget and recipe; top-1/top-5 error against epoch, one PNG per pair,
and a table of the error at fixed epochs.

    python experiments/pure_vs_residual.py --config configs/pure_vs_residual.py --workdir runs/pure_vs_residual \
        [--pairs v3,v4] [--dry-run] [--config.num_epochs=6 ...]

Each network trains in `<workdir>/<model>`, one after another; extra `--config.*` flags go to every run. The base
config must not set fields that only one family has (residual_scales, num_blocks): each network keeps its own
defaults. A rerun skips the networks whose run finished (their summary.json says so) and resumes the others from
their checkpoints. With `--results DIR`, each finished network is evaluated (experiments/evaluate.py, the run's
config) and its metrics.jsonl and result JSON copied to DIR as soon as it finishes, where the summary is written too.

The summary gives, per pair, the measured claim: the steps the residual network needs to reach its pure partner's
final top-1 test error, over the steps the pure network needed for it (below 1: the residual one learns faster).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from launch import finished, fmt, launch, main_command, read_run, report_failures

from inception_jax.evaluation.tables import load_results, render

EVALUATE = Path(__file__).resolve().parent / "evaluate.py"

PAIRS = {
    "v3": ("inception_v3", "inception_resnet_v1"),  # Figs. 21-22: similar cost
    "v4": ("inception_v4", "inception_resnet_v2"),  # Figs. 23-24 (IR-v2 has more compute than v4)
}
TITLES = {"inception_v3": "Inception-v3", "inception_resnet_v1": "Inception-ResNet-v1",
          "inception_v4": "Inception-v4", "inception_resnet_v2": "Inception-ResNet-v2"}  # fmt: skip


def error_curve(run: dict, key: str) -> tuple[list[float], list[float]]:
    """(epochs, error %) of the run's evaluations."""
    per_epoch = run["steps_per_epoch"] or 1.0
    return [r["step"] / per_epoch for r in run["eval"]], [100 * (1 - r[key]) for r in run["eval"]]


def train_error_curve(run: dict) -> tuple[list[float], list[float]]:
    """(epochs, training top-1 error %) of the run's logged training windows (augmented batches, dropout on)."""
    per_epoch = run["steps_per_epoch"] or 1.0
    logged = [r for r in run["train"] if "accuracy" in r]
    return [r["step"] / per_epoch for r in logged], [100 * (1 - r["accuracy"]) for r in logged]


def steps_to_reach(run: dict, error: float) -> int | None:
    """The first evaluated step whose top-1 test error is at most `error` % (None if none is)."""
    return next((r["step"] for r in run["eval"] if 100 * (1 - r["top1"]) <= error + 1e-9), None)


def speedup_ratio(pure: dict, residual: dict) -> dict:
    """The measured claim: the residual network's steps to the pure network's final top-1 test error, over the pure
    network's steps to it (its first evaluation at or below it). Below 1 supports the paper."""
    target = 100 - pure["final_top1"]
    pure_steps, residual_steps = steps_to_reach(pure, target), steps_to_reach(residual, target)
    ratio = residual_steps / pure_steps if residual_steps is not None and pure_steps else None
    return {"target_top1_error": target, "pure_steps": pure_steps, "residual_steps": residual_steps, "ratio": ratio}


def error_at(run: dict, key: str, epoch: float) -> float | None:
    """Error of the last evaluation at or before `epoch` (None if there is none)."""
    points = [(e, err) for e, err in zip(*error_curve(run, key), strict=True) if e <= epoch + 1e-9]
    return points[-1][1] if points else None


def plot_pair(pure: dict, residual: dict, names: tuple[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("top1", "top5"), strict=True):
        for run, name, style, color in ((pure, names[0], "o-", "C0"), (residual, names[1], "s-", "C1")):
            ax.plot(*error_curve(run, key), style, color=color, label=f"{TITLES[name]} test")
            if key == "top1":
                ax.plot(*train_error_curve(run), "--", color=color, alpha=0.7, label=f"{TITLES[name]} train")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{key.replace('top', 'top-')} error (%)")
        ax.set_title(f"{TITLES[names[0]]} vs {TITLES[names[1]]}: {key.replace('top', 'top-')} error")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(root: Path, pairs: list[str]) -> str:
    """Writes one PNG per pair and `pure_vs_residual.md` under root (a workdir of runs, or a results directory of
    <model>.metrics.jsonl files), with the paper's Table 2 beside the result JSONs found there; returns the
    Markdown."""
    lines = []
    for pair in pairs:
        names = PAIRS[pair]
        runs = [read_run(root / name if (root / name).is_dir() else root / f"{name}.metrics.jsonl") for name in names]
        if any(r.get("missing") for r in runs):
            lines.append(f"{' vs '.join(names)}: not run yet\n")
            continue
        png = root / f"{names[0]}_vs_{names[1]}.png"
        plot_pair(*runs, names, png)
        epochs = sorted(set(error_curve(runs[0], "top1")[0]))  # the pure network's evaluations
        lines.append(f"### {TITLES[names[0]]} vs {TITLES[names[1]]} ({png.name})\n")
        claim = speedup_ratio(*runs)
        if claim["ratio"] is not None:
            lines.append(f"{TITLES[names[1]]} reached {TITLES[names[0]]}'s final top-1 test error "
                         f"({claim['target_top1_error']:.2f}%) at step {claim['residual_steps']}, against step "
                         f"{claim['pure_steps']}: **ratio {claim['ratio']:.2f}** (below 1: the residual network "
                         "learns faster).\n")
        else:
            lines.append(f"{TITLES[names[1]]} never reached {TITLES[names[0]]}'s final top-1 test error "
                         f"({claim['target_top1_error']:.2f}%, reached at step {claim['pure_steps']}): no ratio.\n")
        lines.append("| epoch | " + " | ".join(f"{TITLES[n]} top-1 / top-5 err %" for n in names) + " |")
        lines.append("|---|---|---|")
        for epoch in epochs:
            cells = [f"{fmt(error_at(r, 'top1', epoch))} / {fmt(error_at(r, 'top5', epoch))}" for r in runs]
            lines.append(f"| {epoch:.3g} | " + " | ".join(cells) + " |")
        lines.append("")
    evaluated = sorted(root.glob("*.eval_1crop.json"))
    if evaluated:  # the paper's Table 2 beside ours, the data set named
        lines.append(render(load_results(evaluated)))
    markdown = "\n".join(lines)
    (root / "pure_vs_residual.md").write_text(markdown)
    return markdown


def keep_results(workdir: Path, results: Path) -> list[Path]:
    """Evaluates a finished run (1 crop, EMA weights, its config's BatchNorm recalibration) and copies its
    metrics.jsonl and result JSON to `results` as <model>.metrics.jsonl and <model>.eval_1crop.json. The kept JSON
    names its source by the run's name, not by this machine's path to it: results are committed."""
    config = json.loads((workdir / "config.json").read_text())
    out = results / f"{workdir.name}.eval_1crop.json"
    command = [sys.executable, str(EVALUATE), "--workdir", str(workdir), "--batch", str(config["batch_size"]),
               "--bn-recalibration", str(config.get("bn_recalibration_batches", 0)), "--out", str(out)]
    subprocess.run(command, check=True)
    result = json.loads(out.read_text())
    out.write_text(json.dumps({**result, "sources": [workdir.name]}, indent=2) + "\n")
    shutil.copyfile(workdir / "metrics.jsonl", results / f"{workdir.name}.metrics.jsonl")
    return [out, results / f"{workdir.name}.metrics.jsonl"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pure_vs_residual.py", help="base config for every run")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--pairs", default="v3,v4", help=f"comma-separated, from {sorted(PAIRS)}")
    parser.add_argument("--networks", help="comma-separated: train only these networks of the pairs (the summary "
                                           "still covers the pairs)")
    parser.add_argument("--results", type=Path, help="copy each finished network's metrics and result JSON here")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--summarize-only", action="store_true")
    args, extra = parser.parse_known_args(argv)
    pairs = [p for p in args.pairs.split(",") if p]
    if not pairs or any(p not in PAIRS for p in pairs):
        parser.error(f"--pairs must be a comma-separated subset of {sorted(PAIRS)}, got {args.pairs!r}")
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments {bad}: only --config.<field>=<value> overrides pass through")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config} does not exist")
    names = [name for pair in pairs for name in PAIRS[pair]]
    if args.networks:
        chosen = args.networks.split(",")
        if any(n not in names for n in chosen):
            parser.error(f"--networks must be a comma-separated subset of {names}, got {args.networks!r}")
        names = [n for n in names if n in chosen]
    failed, launched = [], 0
    for name in [] if args.summarize_only else names:
        workdir = args.workdir / name
        if finished(workdir) and not args.dry_run:
            print(f"{name}: finished ({workdir}/summary.json); skipped. Delete that file to train it again.")
        else:
            launched += 1
            command = main_command(args.config, workdir, [f"--config.model.name={name}", *extra])
            failed += launch([command], args.dry_run, args.workdir / "logs")
        if args.results and not args.dry_run and finished(workdir):
            args.results.mkdir(parents=True, exist_ok=True)
            print(f"{name}: kept {', '.join(map(str, keep_results(workdir, args.results)))}", flush=True)
    if not args.dry_run:
        print(summarize(args.results or args.workdir, pairs))
    return report_failures(failed, launched)


if __name__ == "__main__":
    sys.exit(main())
