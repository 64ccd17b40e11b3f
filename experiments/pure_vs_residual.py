"""Pure vs residual Inception (paper Figs. 21-26): Inception-v3 vs Inception-ResNet-v1 and Inception-v4 vs
Inception-ResNet-v2, trained with the same budget and recipe; top-1/top-5 error against epoch, one PNG per pair,
and a table of the error at fixed epochs.

    python experiments/pure_vs_residual.py --config configs/pure_vs_residual.py --workdir runs/pure_vs_residual \
        [--pairs v3,v4] [--dry-run] [--config.num_epochs=6 ...]

Each network trains in `<workdir>/<model>`; extra `--config.*` flags go to every run. The base config must not
set fields that only one family has (residual_scales, num_blocks): each network keeps its own defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inception_jax.launch import fmt, launch, main_command, read_run, report_failures

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
        for run, name, style in ((pure, names[0], "o-"), (residual, names[1], "s-")):
            ax.plot(*error_curve(run, key), style, label=TITLES[name])
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{key.replace('top', 'top-')} error (%)")
        ax.set_title(f"{TITLES[names[0]]} vs {TITLES[names[1]]}: {key.replace('top', 'top-')} error")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(root: Path, pairs: list[str]) -> str:
    """Writes one PNG per pair and `pure_vs_residual.md` under root; returns the Markdown."""
    lines = []
    for pair in pairs:
        names = PAIRS[pair]
        runs = [read_run(root / name) for name in names]
        if any(r.get("missing") for r in runs):
            lines.append(f"{' vs '.join(names)}: not run yet\n")
            continue
        png = root / f"{names[0]}_vs_{names[1]}.png"
        plot_pair(*runs, names, png)
        epochs = sorted({round(e, 2) for e in error_curve(runs[0], "top1")[0]})
        lines.append(f"### {TITLES[names[0]]} vs {TITLES[names[1]]} ({png.name})\n")
        lines.append("| epoch | " + " | ".join(f"{TITLES[n]} top-1 / top-5 err %" for n in names) + " |")
        lines.append("|---|---|---|")
        for epoch in epochs:
            cells = [f"{fmt(error_at(r, 'top1', epoch))} / {fmt(error_at(r, 'top5', epoch))}" for r in runs]
            lines.append(f"| {epoch:g} | " + " | ".join(cells) + " |")
        lines.append("")
    markdown = "\n".join(lines)
    (root / "pure_vs_residual.md").write_text(markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pure_vs_residual.py", help="base config for every run")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--pairs", default="v3,v4", help=f"comma-separated, from {sorted(PAIRS)}")
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
    commands = [main_command(args.config, args.workdir / n, [f"--config.model.name={n}", *extra]) for n in names]
    failed = [] if args.summarize_only else launch(commands, args.dry_run, args.workdir / "logs")
    if not args.dry_run:
        print(summarize(args.workdir, pairs))
    return report_failures(failed, len(commands))


if __name__ == "__main__":
    sys.exit(main())
