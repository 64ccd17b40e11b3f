"""The paper's Tables 2-5 beside our measured numbers: paper, ours and the difference in every cell."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

# Top-1 / top-5 error (%) on ILSVRC-2012 val, paper Tables 2-4 (single model) and Table 5 (ensemble).
PAPER_SINGLE_MODEL: dict[str, dict[int, tuple[float, float]]] = {
    "inception_v3": {1: (21.2, 5.6), 12: (19.8, 4.6), 144: (18.9, 4.3)},
    "inception_resnet_v1": {1: (21.3, 5.5), 12: (19.8, 4.6), 144: (18.8, 4.3)},
    "inception_v4": {1: (20.0, 5.0), 12: (18.7, 4.2), 144: (17.7, 3.8)},
    "inception_resnet_v2": {1: (19.9, 4.9), 12: (18.7, 4.1), 144: (17.8, 3.7)},
}
PAPER_ENSEMBLE = {"1x inception_v4 + 3x inception_resnet_v2": {144: (16.5, 3.1)}}
TABLES = {2: 1, 3: 12, 4: 144}  # table number -> crops
DISPLAY = {
    "inception_v3": "Inception-v3",
    "inception_resnet_v1": "Inception-ResNet-v1",
    "inception_v4": "Inception-v4",
    "inception_resnet_v2": "Inception-ResNet-v2",
}


def load_results(paths: Iterable[str | Path]) -> list[dict]:
    """Reads evaluation result JSONs (as written by `inception_jax.evaluation`); each needs `model` (or
    `members` for an ensemble), `crops`, `top1_error`, `top5_error` (percent)."""
    results = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        missing = [k for k in ("crops", "top1_error", "top5_error") if k not in result]
        if missing or not ("model" in result or "members" in result):
            raise ValueError(f"{path} is not an evaluation result: missing {missing or ['model or members']}")
        result["source"] = str(path)
        results.append(result)
    return results


def ensemble_name(members: list[str]) -> str:
    """'1x inception_v4 + 3x inception_resnet_v2' for the member model names, in the paper's order."""
    counts: dict[str, int] = {}
    for name in members:
        counts[name] = counts.get(name, 0) + 1
    order = list(DISPLAY)
    return " + ".join(f"{n}x {name}" for name, n in sorted(counts.items(), key=lambda kv: order.index(kv[0])))


def _cell(paper: float | None, ours: float | None) -> str:
    fmt = lambda v: "—" if v is None else f"{v:.2f}"
    diff = "—" if paper is None or ours is None else f"{ours - paper:+.2f}"
    return f"{fmt(paper)} | {fmt(ours)} | {diff}"


def _settings(results: list[dict]) -> str:
    keys = sorted({(r.get("dataset", "?"), r.get("split", "?"), r.get("num_examples", "?")) for r in results})
    return "; ".join(f"{d} / {s}, {n} images" for d, s, n in keys) or "no results"


def render(results: list[dict]) -> str:
    """Markdown for Tables 2-5: one row per network, paper | ours | ours - paper for top-1 and top-5 error."""
    header = "| network | top-1 paper | top-1 ours | Δ | top-5 paper | top-5 ours | Δ |\n|---|---|---|---|---|---|---|"
    out = []
    for table, crops in TABLES.items():
        rows = [r for r in results if "model" in r and r["crops"] == crops]
        out.append(f"### Table {table}: {crops} crop{'s' if crops > 1 else ''}, single model\n")
        out.append(f"Evaluated on: {_settings(rows)}.\n\n{header}")
        by_model = {r["model"]: r for r in rows}
        for name in list(DISPLAY) + sorted(set(by_model) - set(DISPLAY)):
            paper = PAPER_SINGLE_MODEL.get(name, {}).get(crops)
            ours = by_model.get(name)
            if paper is None and ours is None:
                continue
            p1, p5 = paper or (None, None)
            o1, o5 = (ours["top1_error"], ours["top5_error"]) if ours else (None, None)
            out.append(f"| {DISPLAY.get(name, name)} | {_cell(p1, o1)} | {_cell(p5, o5)} |")
        out.append("")
    ensembles = [r for r in results if "members" in r]
    out.append("### Table 5: ensembles\n")
    out.append(f"Evaluated on: {_settings(ensembles)}.\n")
    out.append(header.replace("| network |", "| ensemble | crops |").replace("|---|", "|---|---|", 1))
    rows = {(ensemble_name(r["members"]), r["crops"]): r for r in ensembles}
    for name, per_crops in PAPER_ENSEMBLE.items():
        for crops in per_crops:
            rows.setdefault((name, crops), None)
    for (name, crops), ours in sorted(rows.items()):
        p1, p5 = PAPER_ENSEMBLE.get(name, {}).get(crops, (None, None))
        o1, o5 = (ours["top1_error"], ours["top5_error"]) if ours else (None, None)
        out.append(f"| {name} | {crops} | {_cell(p1, o1)} | {_cell(p5, o5)} |")
    return "\n".join(out) + "\n"
