"""What the experiment scripts share: launching one training run per setting, and reading a run's metrics."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

DEAD_THRESHOLD = 0.99  # a net whose last feature map is >= 99% exact zeros has "died" (paper §3.3)


def main_command(config: str, workdir: Path, overrides: list[str]) -> list[str]:
    """The `python -m inception_jax.main` command line for one run."""
    return [sys.executable, "-m", "inception_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def finished(workdir: Path) -> bool:
    """Whether the run in `workdir` ran to its last step (its summary.json says so, unpreempted)."""
    path = Path(workdir) / "summary.json"
    if not path.is_file():
        return False
    summary = json.loads(path.read_text())
    return not summary.get("preempted") and summary.get("step") == summary.get("total_steps")


def launch(commands: list[list[str]], dry_run: bool, log_dir: Path) -> list[Path]:
    """Runs the commands one after another (here), or prints them (to submit as separate jobs on a cluster).
    A run that fails is reported and the others go on; rerunning resumes each from its checkpoints. Returns the
    logs of the runs that failed."""
    failed = []
    for command in commands:
        text = shlex.join(command)
        if dry_run:
            print(text)
            continue
        print(f"$ {text}", flush=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        workdir = next(c.split("=", 1)[1] for c in command if c.startswith("--workdir="))
        log_path = log_dir / f"{Path(workdir).name}.log"
        with open(log_path, "a") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        if code:
            print(f"  exited with {code}; see {log_path}", flush=True)
            failed.append(log_path)
    return failed


def report_failures(failed: list[Path], total: int) -> int:
    """The exit code of a script that launched `total` runs: 1, with the failed runs' logs named, if any failed."""
    if not failed:
        return 0
    print(f"{len(failed)} of {total} runs failed; their logs: {', '.join(map(str, failed))}", file=sys.stderr)
    return 1


def read_run(workdir: Path) -> dict:
    """A run's curves and its failure signature from `workdir/metrics.jsonl` (or from `workdir` if it is that file).

    Returns train/eval records (later records of a step win, as a resumed run appends), final and best eval
    top-1/top-5 (%), the first step with a non-finite loss (divergence), the first step whose `dead_fraction`
    reaches DEAD_THRESHOLD before any divergence (death), the first whose `dead_channels` (the fraction of the last
    feature map's channels that are zero for the whole batch) reaches 1.0 before any divergence, the last values of
    both, and steps per epoch.
    """
    path = Path(workdir) if Path(workdir).is_file() else Path(workdir) / "metrics.jsonl"  # or a copied metrics file
    if not path.exists():
        return {"workdir": str(workdir), "missing": True}
    by_key: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_key[(record["split"], record["step"])] = record
    train = [r for (split, _), r in sorted(by_key.items(), key=lambda kv: kv[0][1]) if split == "train"]
    evals = [r for (split, _), r in sorted(by_key.items(), key=lambda kv: kv[0][1]) if split == "eval"]
    per_epoch = next((r["step"] / r["epoch"] for r in train if r.get("epoch")), None)
    diverged = next((r["step"] for r in train if not math.isfinite(r.get("loss", 0.0))), None)
    # A death is one before any divergence: a run that stopped on a non-finite loss diverged, whatever its map held.
    alive = [r for r in train if diverged is None or r["step"] < diverged]
    died = next((r["step"] for r in alive if r.get("dead_fraction", 0.0) >= DEAD_THRESHOLD), None)
    channels_died = next((r["step"] for r in alive if r.get("dead_channels", 0.0) >= 1.0), None)
    return {
        "workdir": str(workdir),
        "train": train,
        "eval": evals,
        "steps_per_epoch": per_epoch,
        "final_top1": 100 * evals[-1]["top1"] if evals else None,
        "final_top5": 100 * evals[-1]["top5"] if evals else None,
        "best_top1": 100 * max(r["top1"] for r in evals) if evals else None,
        "diverged_step": diverged,
        "died_step": died,
        "last_dead_fraction": train[-1].get("dead_fraction") if train else None,
        "channels_died_step": channels_died,
        "last_dead_channels": train[-1].get("dead_channels") if train else None,
        "last_loss": train[-1].get("loss") if train else None,
    }


def fmt(value: float | int | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)
