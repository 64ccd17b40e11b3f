"""The PNG of a run's curves (`curves.png` in the workdir), drawn from its metrics.jsonl at the end of a run."""

from __future__ import annotations

from inception_jax.training.metrics import read_jsonl

PLOT = "curves.png"


def plot_curves(jsonl_path: str, png_path: str) -> str:
    """Training loss, train/eval accuracy, learning rate and throughput against the step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_split: dict[str, dict[int, dict]] = {}
    for record in read_jsonl(jsonl_path):
        by_split.setdefault(record["split"], {})[record["step"]] = record
    train = [by_split.get("train", {})[s] for s in sorted(by_split.get("train", {}))]
    evals = [by_split.get("eval", {})[s] for s in sorted(by_split.get("eval", {}))]

    def series(records: list[dict], key: str) -> tuple[list, list]:
        points = [(r["step"], r[key]) for r in records if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    ax.plot(*series(train, "loss"), label="train loss")
    ax.plot(*series(evals, "loss"), "o-", label="eval loss")
    ax.set_title("loss")
    ax = axes[0, 1]
    ax.plot(*series(train, "accuracy"), label="train top-1 (dropout on)")
    ax.plot(*series(evals, "top1"), "o-", label="eval top-1")
    ax.plot(*series(evals, "top5"), "s--", label="eval top-5")
    ax.set_title("accuracy")
    axes[1, 0].plot(*series(train, "learning_rate"))
    axes[1, 0].set_title("learning rate")
    axes[1, 1].plot(*series(train, "images_per_sec"))
    axes[1, 1].set_title("images / s")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
