"""Benchmark results: one `Result` per measurement, the table and ratio summaries, and the JSON-lines files that
`--json` writes and `--report` reads."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable

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
    ops: str = "auto"  # ours: the ops' implementation
    run: str = ""  # the run's name in a history file of several runs (`--run`)


def _setting(r: Result) -> tuple:
    return (r.model, r.mode, r.batch, r.image_size)


def _best_timm(results: list[Result], key: Callable[[Result], tuple], reference: str = "timm") -> dict[tuple, float]:
    """The fastest images/s of the `reference` framework's modes ("timm" or "keras") for each `key`."""
    best: dict[tuple, float] = {}
    for r in results:
        if r.impl.startswith(reference):
            best[key(r)] = max(best.get(key(r), 0.0), r.images_per_s)
    return best


def format_table(results: list[Result]) -> str:
    header = (
        "| impl | model | mode | batch | size | dtype | img/s | step ms | compile s | GFLOP/img | TFLOP/s | MFU "
        "| peak GiB | saved act. GiB | vs best timm | vs best Keras |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    best_timm = _best_timm(results, _setting)
    best_keras = _best_timm(results, _setting, "keras")
    fmt = lambda v, spec: "—" if v is None else format(v, spec)
    for r in results:
        ratios = [f"{r.images_per_s / ref:.2f}x" if ref and r.impl == "ours" else ""
                  for ref in (best_timm.get(_setting(r)), best_keras.get(_setting(r)))]  # fmt: skip
        impl = r.impl + (f"[{r.ops}]" if r.impl == "ours" and r.ops != "auto" else "") + ("+remat" if r.remat else "")
        gflop = None if r.flops_per_image is None else r.flops_per_image / 1e9
        mfu = None if r.mfu is None else 100 * r.mfu
        lines.append(
            f"| {impl} | {r.model} | {r.mode} | {r.batch} | {r.image_size} | {r.dtype} | {r.images_per_s:.2f} | "
            f"{r.step_ms:.0f} | {fmt(r.compile_s, '.1f')} | {fmt(gflop, '.2f')} | {fmt(r.achieved_tflops, '.3f')} | "
            f"{fmt(mfu, '.1f')} | {fmt(r.peak_memory_gib, '.2f')} | {fmt(r.saved_activations_gib, '.2f')} | "
            f"{ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)


def summarise(results: list[Result]) -> list[Result]:
    """One row per implementation and setting: the median over rounds of each process's median step time (the
    largest peak memory), so that a slow spell of a shared machine during one process moves a ratio less."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        key = (r.run, r.impl, r.ops, r.model, r.mode, r.batch, r.image_size, r.dtype, r.remat)
        groups.setdefault(key, []).append(r)
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


def ratios_by_round(results: list[Result], reference: str = "timm") -> dict[tuple, list[float]]:
    """Ours / the best mode of the `reference` framework within each round, per setting and ops implementation: the
    spread the summary's ratio hides."""
    in_round = lambda r: (*_setting(r), r.run, r.round)
    best = _best_timm(results, in_round, reference)
    out: dict[tuple, list[float]] = {}
    for r in results:
        if r.impl == "ours" and in_round(r) in best:
            out.setdefault((*_setting(r), r.ops), []).append(r.images_per_s / best[in_round(r)])
    return out


def format_round_ratios(results: list[Result]) -> str:
    """One line per setting and reference framework: ours / its best mode in each round, the spread a median over
    rounds hides."""
    return "\n".join(
        f"{name} {mode} b{batch}@{size}: ours{'' if impl == 'auto' else f'[{impl}]'} / best {label} by round "
        + ", ".join(f"{q:.2f}x" for q in ratios)
        for reference, label in (("timm", "timm"), ("keras", "Keras"))
        for (name, mode, batch, size, impl), ratios in ratios_by_round(results, reference).items()
    )


def load_results(path: str) -> list[Result]:
    """The results appended to a `--json` file, each with its run (`Result.run`: the name a history file gives
    each of its runs, "" in a file of one run). Runs written before rounds were recorded hold several passes over
    the same settings one after another: within a run, a setting's k-th measurement of an implementation is its
    round k, and every row of a run has the run's number of rounds."""
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
                key = (result.run, result.impl, result.ops, *_setting(result), result.dtype, result.remat)
                result.round = seen.get(key, 0)
                seen[key] = result.round + 1
            results.append(result)
    if not results:
        raise ValueError(f"{path} holds no benchmark results")
    rounds: dict[str, int] = {}
    for r in results:
        rounds[r.run] = max(rounds.get(r.run, 1), r.round + 1)
    return [dataclasses.replace(r, rounds=max(r.rounds, rounds[r.run])) for r in results]


def runs(results: list[Result]) -> dict[str, list[Result]]:
    """The results by run, runs in the order they first appear."""
    out: dict[str, list[Result]] = {}
    for r in results:
        out.setdefault(r.run, []).append(r)
    return out


def ratio_history(files: dict[str, list[Result]]) -> str:
    """One row per run (a name and its results): ours / the best timm mode for each setting of the matrix (medians
    over rounds when a run holds several), in the order given."""
    settings = [s for s in MATRIX if any(_setting(r) == s for rows in files.values() for r in rows)]
    settings += sorted({_setting(r) for rows in files.values() for r in rows} - set(settings))
    short = {"inception_v4": "v4", "inception_resnet_v2": "IR-v2"}
    names = [f"{short.get(m, m)} {mode} b{b}@{size}" for m, mode, b, size in settings]
    lines = ["| run | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for name, rows in files.items():
        summary = summarise(rows)
        best = _best_timm(summary, _setting)
        ours = {_setting(r): r.images_per_s for r in summary if r.impl == "ours" and r.ops == "auto"}
        cells = [f"{ours[s] / best[s]:.2f}x" if s in ours and s in best else "—" for s in settings]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(paths: list[str], run: str | None = None) -> int:
    """Prints the tables of saved results: with one run in all (or `run` named), its table and per-round ratios;
    else the ratio history, one row per run in file order (a file of one unnamed run is a run named by its path)."""
    history: dict[str, list[Result]] = {}
    for path in paths:
        for name, rows in runs(load_results(path)).items():
            label = name or path
            history[f"{path}:{label}" if label in history else label] = rows
    if run is not None:
        if run not in history:
            raise ValueError(f"--run {run!r} is not in {', '.join(paths)}; its runs: {', '.join(history)}")
        history = {run: history[run]}
    if len(history) == 1:
        results = next(iter(history.values()))
        print(format_table(summarise(results)))
        if results[0].rounds > 1:
            print(format_round_ratios(results))
    else:
        print(ratio_history(history))
    return 0
