"""The speed benchmark (inception_jax.bench) runs end to end and reports what it claims (timings are not asserted:
benchmarks, not tests, carry speed targets); its saved history is what the README shows; the GPU script asks for
what the benchmark and the tests accept."""

import dataclasses
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from inception_jax import cpu_settings, models
from inception_jax.bench import __main__ as cli
from inception_jax.bench.ours import largest_fitting, saved_activation_bytes
from inception_jax.bench.results import Result, format_table, load_results, summarise

ROOT = Path(__file__).resolve().parents[1]
HISTORY = ROOT / "experiments" / "results" / "bench_history.jsonl"
GPU_SCRIPT = ROOT / "experiments" / "gpu_check.sh"
GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def result(impl, ips, **extra):
    return Result(impl, "inception_v4", "infer", 8, 299, "float32", ips, 1000 * 8 / ips, **extra)


def ours_line(printed: str, impl: str = "ours") -> str:
    return next(line for line in printed.splitlines() if line.startswith(f"| {impl} |"))


def test_table_gives_ratio_to_the_best_timm_mode():
    table = format_table([result("ours", 6.0), result("timm", 4.0), result("timm-channels_last", 5.0)])
    assert ours_line(table).rstrip().endswith("| 1.20x |  |")


def test_table_gives_ratio_to_the_best_keras_mode():
    table = format_table([result("ours", 6.0), result("keras", 4.0), result("keras-stateless", 5.0)])
    assert ours_line(table).rstrip().endswith("|  | 1.20x |")


def test_table_names_each_ops_implementation():
    rows = [result("ours", 6.0, ops="reference"), result("ours", 4.0, ops="cpu"), result("timm", 5.0)]
    table = format_table(summarise(rows))
    assert ours_line(table, "ours[reference]").rstrip().endswith("| 1.20x |  |")
    assert ours_line(table, "ours[cpu]").rstrip().endswith("| 0.80x |  |")


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parity
def test_benchmark_runs_ours_and_timm_in_separate_processes(timm_and_torch, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    argv = ["--model", "inception_v3", "--batch", "2", "--image-size", "75", "--mode", "infer", "--vs-timm",
            "--warmup", "1", "--repeats", "2", "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in rows] == ["ours", "timm", "timm-channels_last"]
    ours = rows[0]
    assert ours["ops"] == "auto" and ours["images_per_s"] > 0 and ours["compile_s"] > 0 and ours["peak_memory_gib"] > 0
    # XLA's cost analysis of the reference program: 5.50 GMACs at 299 scale to about (75/299)^2 of that at 75,
    # i.e. ~0.35 GFLOP (the CPU kernels' Winograd convolutions would count fewer).
    assert 0.2e9 < ours["flops_per_image"] < 0.6e9
    assert "| ours | inception_v3 | infer | 2 | 75 |" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parity
def test_benchmark_runs_ours_and_keras_on_jax_in_separate_processes(keras_module, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    for mode in ("infer", "train"):
        argv = ["--model", "inception_v3", "--batch", "2", "--image-size", "75", "--mode", mode, "--vs-keras",
                "--warmup", "1", "--repeats", "2", "--json", str(out)]  # fmt: skip
        assert cli.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["mode"]) for r in rows] == [
        (impl, mode) for mode in ("infer", "train") for impl in ("ours", "keras", "keras-stateless")]  # fmt: skip
    assert all(r["images_per_s"] > 0 and r["compile_s"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert re.search(r"\| ours \| inception_v3 \| train \| 2 \| 75 \|.*\|  \| [0-9.]+x \|$", printed, re.MULTILINE)


def test_keras_runs_on_jax_without_our_settings(monkeypatch):
    seen = {}

    def fake_run(command, env, **kwargs):
        seen["command"], seen["env"] = command, env
        return subprocess.CompletedProcess(command, 0, json.dumps(dataclasses.asdict(result("keras", 1.0))))

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    ours_xla = cpu_settings.xla_flags("--xla_force_host_platform_device_count=1")
    monkeypatch.setenv("XLA_FLAGS", ours_xla)
    cli.run_isolated({"impl": "keras-stateless"})
    assert seen["env"]["KERAS_BACKEND"] == "jax"
    assert seen["env"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"  # the user's flag stays
    assert seen["command"][-1] == cpu_settings.OFF_FLAG


def test_vs_keras_needs_a_network_keras_has(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model", "inception_v4", "--vs-keras"])
    assert "Keras has no inception_v4" in capsys.readouterr().err


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        cli.main(["--image-size", "64"])


def test_ops_takes_a_comma_separated_list_of_implementations(capsys):
    parse = lambda *argv: cli.build_parser().parse_args(list(argv)).ops
    assert parse() == ["auto"]
    assert parse("--ops", "reference,cpu") == ["reference", "cpu"]
    assert parse("--ops", " cpu , auto ") == ["cpu", "auto"]
    for bad in ("gpu", "reference,gpu", ","):
        with pytest.raises(SystemExit):
            parse("--ops", bad)
        err = capsys.readouterr().err
        assert f"--ops takes a comma-separated subset of ('auto', 'reference', 'cpu'), got {bad!r}" in err


def test_run_job_passes_the_ops_through(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "bench_ours", lambda *args, **kwargs: calls.append((args, kwargs)) or result("ours", 1))
    job = dict(impl="ours", model="inception_v4", mode="train", batch=8, size=299, dtype="float32", warmup=0,
               repeats=1, peak_flops=None)  # fmt: skip
    cli.run_job(dict(job, ops="cpu", remat=True))
    cli.run_job(job)  # a job written before ops existed
    assert [kwargs for _, kwargs in calls] == [{"remat": True, "ops": "cpu"}, {"remat": False, "ops": "auto"}]
    assert calls[0][0] == ("inception_v4", "train", 8, 299, "float32", 0, 1, None)


def fake_run_isolated(order: list, ms: dict):
    """A stand-in for one measurement's process: ms[label] milliseconds per step (an iterator for a series)."""

    def run(job):
        label = job["impl"] if job["impl"] != "timm" else "timm" + "-channels_last" * job["channels_last"]
        label += f"[{job['ops']}]" if job["impl"] == "ours" else "-amp" * job["amp"]
        order.append(label)
        step_ms = ms[label] if isinstance(ms[label], float) else next(ms[label])
        return Result(job["impl"] if job["impl"] == "ours" else label.split("[")[0], job["model"], job["mode"],
                      job["batch"], job["size"], job["dtype"], job["batch"] / step_ms * 1e3, step_ms,
                      ops=job.get("ops", "auto"), peak_memory_gib=float(len(order)))  # fmt: skip

    return run


def test_one_ours_row_per_ops_implementation(monkeypatch, tmp_path, capsys):
    order = []
    ms = {"ours[reference]": 1000.0, "ours[cpu]": 800.0, "timm": 2000.0, "timm-channels_last": 1200.0}
    monkeypatch.setattr(cli, "run_isolated", fake_run_isolated(order, ms))
    monkeypatch.setitem(sys.modules, "timm", object())
    out = tmp_path / "bench.jsonl"
    argv = ["--mode", "train", "--ops", "reference,cpu", "--vs-timm", "--json", str(out), "--run", "mine"]
    assert cli.main(argv) == 0
    assert order == ["ours[reference]", "ours[cpu]", "timm", "timm-channels_last"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["ops"], r["run"]) for r in rows] == [
        ("ours", "reference", "mine"), ("ours", "cpu", "mine"), ("timm", "auto", "mine"),
        ("timm-channels_last", "auto", "mine")]  # fmt: skip
    printed = capsys.readouterr().out
    assert ours_line(printed, "ours[reference]").rstrip().endswith("| 1.20x |  |")
    assert ours_line(printed, "ours[cpu]").rstrip().endswith("| 1.50x |  |")


def test_largest_fitting_finds_the_boundary():
    assert largest_fitting(lambda n: n <= 77, start=8) == 77
    assert largest_fitting(lambda n: n <= 77, start=128) == 77
    assert largest_fitting(lambda n: n <= 77, start=8, step=8) in range(70, 78)
    assert largest_fitting(lambda n: False) == 0
    assert largest_fitting(lambda n: True, limit=300) == 300


def test_remat_shrinks_the_activations_kept_for_backward():
    # JAX's accounting of the gradient's residuals (traced, not compiled): per-block remat keeps block outputs only.
    # "auto" is counted as the CPU kernels here (a traced "auto" program holds both implementations).
    plain = saved_activation_bytes(models.create("inception_v4"), 8, 299)
    assert plain == saved_activation_bytes(models.create("inception_v4", ops="cpu"), 8, 299)
    remat = saved_activation_bytes(models.create("inception_v4", remat=True), 8, 299)
    # ~1.2 GiB at batch 8: each conv's output once (the fused BatchNorm + ReLU recomputes the rest from it) and the
    # stored inputs of XLA's own convolutions
    assert 1.0 * 2**30 < plain < 1.5 * 2**30
    assert remat < plain / 6


def test_max_batch_reports_without_and_with_remat(monkeypatch, tmp_path):
    # A stand-in memory model: 1 GiB fixed plus 0.1 GiB per image, a third of that with remat.
    monkeypatch.setattr(cli, "train_step_bytes",
                        lambda name, n, size, dtype, remat: 2**30 * (1 + n * (0.1 / 3 if remat else 0.1)))  # fmt: skip
    out = tmp_path / "max.jsonl"
    assert cli.main(["--max-batch", "--memory-gib", "5", "--batch-step", "1", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["remat"], r["max_batch"]) for r in rows] == [(False, 40), (True, 120)]


def test_max_batch_without_a_memory_limit_asks_for_one(capsys):
    assert cli.main(["--max-batch"]) == 2
    assert "--memory-gib" in capsys.readouterr().err


_FAULTS_PROGRAM = """
import resource
import threading
import jax
import jax.numpy as jnp

step = jax.jit(lambda x: jnp.sin(x) * 2.0)  # a fresh 64 MiB output on every call
x = jnp.ones((4096, 4096))
faults = []

def run():  # off the main thread, as XLA's runtime allocates a train step's temporaries
    for _ in range(2):
        step(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=run)
thread.start()
thread.join()
print(faults[0])
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_malloc_settings_stop_page_faults_after_the_first_steps():
    """Blocks freed by one step are reused by the next instead of being unmapped and faulted in again (with huge
    pages alone, glibc still maps each large block afresh)."""

    def faults(tunables: str) -> int:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"GLIBC_TUNABLES": tunables}
        out = subprocess.run([sys.executable, "-c", _FAULTS_PROGRAM], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    huge_pages_only = faults(cpu_settings.MALLOC_TUNABLES[0])
    ours = faults(":".join(cpu_settings.MALLOC_TUNABLES))
    assert huge_pages_only > 1000, huge_pages_only  # 10 x 64 MiB freshly mapped: 5k faults here
    assert ours * 5 < huge_pages_only, (ours, huge_pages_only)  # 32-256 here


def test_timm_runs_without_our_malloc_settings(monkeypatch):
    seen = {}

    def fake_run(command, env, **kwargs):
        seen[json.loads(command[command.index("--worker") + 1])["impl"]] = (command, env)
        return subprocess.CompletedProcess(command, 0, json.dumps(dataclasses.asdict(result("ours", 1.0))) + "\n")

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    monkeypatch.setenv("GLIBC_TUNABLES", cpu_settings.malloc_tunables("glibc.malloc.arena_max=2"))
    assert cli.run_isolated({"impl": "ours"}) == result("ours", 1.0)
    cli.run_isolated({"impl": "timm"})
    (ours_command, ours_env), (timm_command, timm_env) = seen["ours"], seen["timm"]
    assert cpu_settings.MALLOC_TUNABLES[0] in ours_env["GLIBC_TUNABLES"]
    assert cpu_settings.OFF_FLAG not in ours_command
    # PyTorch as its users run it: the user's own tunables only, and no CPU settings of ours in the worker.
    assert timm_env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    assert timm_command[-1] == cpu_settings.OFF_FLAG


def test_timm_gets_no_tunables_when_all_were_ours(monkeypatch):
    seen = {}

    def fake_run(command, env, **kwargs):
        seen["env"] = env
        return subprocess.CompletedProcess(command, 0, json.dumps(dataclasses.asdict(result("timm", 1.0))))

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    monkeypatch.setenv("GLIBC_TUNABLES", ":".join(cpu_settings.MALLOC_TUNABLES))
    cli.run_isolated({"impl": "timm"})
    assert "GLIBC_TUNABLES" not in seen["env"]


def test_rounds_alternate_the_processes_and_report_medians(monkeypatch, tmp_path, capsys):
    # Ours takes 1000, 1400, 1100 ms over three rounds, timm channels_last 1200 ms each time, plain timm 2000 ms.
    order = []
    ms = {"ours[auto]": iter([1000.0, 1400.0, 1100.0]), "timm": 2000.0, "timm-channels_last": 1200.0}
    monkeypatch.setattr(cli, "run_isolated", fake_run_isolated(order, ms))
    monkeypatch.setitem(sys.modules, "timm", object())
    out = tmp_path / "bench.jsonl"
    argv = ["--model", "inception_v4", "--batch", "8", "--mode", "train", "--vs-timm", "--rounds", "3",
            "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    forward = ["ours[auto]", "timm", "timm-channels_last"]
    assert order == forward + forward[::-1] + forward
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["round"], r["rounds"]) for r in rows][:4] == [
        ("ours", 0, 3), ("timm", 0, 3), ("timm-channels_last", 0, 3), ("timm-channels_last", 1, 3)]  # fmt: skip
    printed = capsys.readouterr().out
    ours = ours_line(printed)
    # Median 1100 ms against timm channels_last's 1200 ms; peak memory the largest of ours' three processes (7).
    assert "| 1100 |" in ours and ours.rstrip().endswith("| 1.09x |  |") and "| 7.00 |" in ours
    assert "inception_v4 train b8@299: ours / best timm by round 1.20x, 0.86x, 1.09x" in printed


def test_summary_keeps_single_runs_as_they_are():
    rows = [result("ours", 6.0), result("timm", 4.0)]
    assert summarise(rows) == [dataclasses.replace(r, rounds=1) for r in rows]


@pytest.mark.parametrize("flag", [["--rounds", "0"], ["--repeats", "0"], ["--warmup", "-1"]])
def test_bad_repetition_counts_are_refused(flag, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model", "inception_v4", *flag])
    assert "must be >= 1" in capsys.readouterr().err


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _row(impl, model, ms, **extra):
    return dict(impl=impl, model=model, mode="train", batch=8, image_size=299, dtype="float32",
                images_per_s=8 / ms * 1e3, step_ms=ms, **extra)  # fmt: skip


def test_report_reads_runs_saved_before_rounds_were_recorded(tmp_path, capsys):
    # Two passes in one file, written before the `round` field existed: ours 1000 then 1400 ms, timm 1200 then 1000.
    old = tmp_path / "old.jsonl"
    _write_rows(old, [_row("ours", "inception_v4", 1000.0), _row("timm", "inception_v4", 1200.0),
                      _row("ours", "inception_v4", 1400.0), _row("timm", "inception_v4", 1000.0)])  # fmt: skip
    loaded = load_results(str(old))
    assert [(r.impl, r.round, r.rounds, r.run) for r in loaded] == [
        ("ours", 0, 2, ""), ("timm", 0, 2, ""), ("ours", 1, 2, ""), ("timm", 1, 2, "")]  # fmt: skip
    assert cli.main(["--report", str(old)]) == 0
    printed = capsys.readouterr().out
    # Medians over the two passes: ours 1200 ms, timm 1100 ms; by round 1.20x and 0.71x.
    ours = ours_line(printed)
    assert "| 1200 |" in ours and ours.rstrip().endswith("| 0.92x |  |")
    assert "inception_v4 train b8@299: ours / best timm by round 1.20x, 0.71x" in printed


def test_report_of_several_files_gives_one_ratio_row_per_file(tmp_path, capsys):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    _write_rows(first, [_row("ours", "inception_v4", 1000.0), _row("timm-channels_last", "inception_v4", 800.0),
                        _row("timm", "inception_v4", 1500.0)])  # fmt: skip
    _write_rows(second, [_row("ours", "inception_resnet_v2", 500.0, round=0, rounds=1),
                         _row("timm", "inception_resnet_v2", 1000.0, round=0, rounds=1)])  # fmt: skip
    assert cli.main(["--report", str(first), str(second)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | v4 train b8@299 | IR-v2 train b8@299 |"
    assert lines[2:] == [f"| {first} | 0.80x | — |", f"| {second} | — | 2.00x |"]


def test_history_file_gives_one_ratio_row_per_run(tmp_path, capsys):
    # Run "b" (first in the file) made two passes before rounds were recorded, run "a" one pass with rounds.
    history = tmp_path / "history.jsonl"
    ms = [("b", "ours", 1000.0), ("b", "timm", 1200.0), ("b", "ours", 1400.0), ("b", "timm", 1000.0),
          ("a", "ours", 500.0), ("a", "timm", 1000.0)]  # fmt: skip
    _write_rows(history, [_row(impl, "inception_v4", step_ms, run=run) for run, impl, step_ms in ms])
    loaded = load_results(str(history))
    assert [(r.run, r.round, r.rounds) for r in loaded] == [("b", 0, 2), ("b", 0, 2), ("b", 1, 2), ("b", 1, 2),
                                                             ("a", 0, 1), ("a", 0, 1)]  # fmt: skip
    assert cli.main(["--report", str(history)]) == 0
    assert capsys.readouterr().out.splitlines() == ["| run | v4 train b8@299 |", "|---|---|", "| b | 0.92x |",
                                                    "| a | 2.00x |"]  # fmt: skip
    # One run: its whole table, and its ratio in each round.
    assert cli.main(["--report", str(history), "--run", "b"]) == 0
    printed = capsys.readouterr().out
    assert "| 1200 |" in ours_line(printed) and "ours / best timm by round 1.20x, 0.71x" in printed
    with pytest.raises(SystemExit):
        cli.main(["--report", str(history), "--run", "c"])
    assert "--run 'c' is not in" in (err := capsys.readouterr().err) and "its runs: b, a" in err


def test_report_refuses_missing_and_foreign_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--report", str(tmp_path / "nope.jsonl")])
    assert "no such file" in capsys.readouterr().err
    foreign = tmp_path / "metrics.jsonl"
    foreign.write_text(json.dumps(_row("ours", "inception_v4", 1000.0)) + "\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(SystemExit):
        cli.main(["--report", str(foreign)])
    assert "metrics.jsonl:2 is not a benchmark result" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SystemExit):
        cli.main(["--report", str(empty)])
    assert "holds no benchmark results" in capsys.readouterr().err


def test_saved_history_holds_each_run_once_oldest_first():
    runs = [r.run for r in load_results(str(HISTORY))]
    order = list(dict.fromkeys(runs))
    assert order[0] == "before" and "latest" in order and len(order) >= 16
    assert runs == sorted(runs, key=order.index)  # each run's rows together


def test_readme_ratio_history_is_the_saved_results(capsys):
    # The ratio table between the lines `<!-- bench-history -->` and `<!-- /bench-history -->` (in the README, or a
    # page of docs/): the output of `python -m inception_jax.bench --report` of the history file.
    assert cli.main(["--report", str(HISTORY)]) == 0
    table = capsys.readouterr().out.strip()
    marked = re.compile(r"^<!-- bench-history -->\n(.*?)^<!-- /bench-history -->", re.DOTALL | re.MULTILINE)
    pages = {page: marked.search(page.read_text()) for page in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]}
    shown = {page.relative_to(ROOT): found.group(1).strip() for page, found in pages.items() if found}
    if not shown:
        print(table)
        command = f"python -m inception_jax.bench --report {HISTORY.relative_to(ROOT)}"
        pytest.skip(f"no <!-- bench-history --> ... <!-- /bench-history --> lines in README.md or docs/ yet; "
                    f"between them goes `{command}`:\n{table}")  # fmt: skip
    assert shown == dict.fromkeys(shown, table)


def _script_commands(marker: str) -> list[list[str]]:
    """The words of each command line of the GPU script that runs `marker`, from it to a redirection or a pipe."""
    script = GPU_SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for line in script.splitlines():
        if marker in line and not line.lstrip().startswith("#"):
            words = shlex.split(line.split(marker, 1)[1], comments=True)
            end = next((i for i, w in enumerate(words) if re.match(r"\d*>|[|&]", w)), len(words))
            commands.append(words[:end])
    return commands


def test_gpu_script_asks_the_benchmark_for_what_it_accepts():
    # The GPU script runs unattended on a lent machine: its bench command lines must parse (a typo there would cost
    # the machine's whole loan), with the settings the GPU check needs.
    script = GPU_SCRIPT.read_text()
    assert "set -euo pipefail" in script and 'out="${1:-${OUT:-.}}"' in script
    words = lambda command: ["o" if w.startswith("$") and not w.startswith("${") else w
                             for w in command if not w.startswith("${")]  # fmt: skip
    parsed = [cli.build_parser().parse_args(words(c)) for c in _script_commands("-m inception_jax.bench")]
    timed = [args for args in parsed if not args.report]
    assert len(parsed) - len(timed) == 1  # the closing report of the JSON
    assert all((a.mode, a.batch, a.image_size, a.dtype, a.warmup, a.repeats) == ("train", 128, 299, "bfloat16", 3, 10)
               and a.json and not a.max_batch for a in timed)  # fmt: skip
    for model in ("inception_v4", "inception_resnet_v2"):
        mine = [a for a in timed if a.model == model]
        assert sorted(ops for a in mine for ops in a.ops) == ["cpu", "reference"]
        assert any(a.vs_timm and a.timm_amp and "reference" in a.ops for a in mine)


@pytest.mark.slow
@pytest.mark.subprocess
def test_gpu_script_selects_existing_tests():
    # Each pytest line of the GPU script runs under a timeout, takes both tiers (--all), and its -k selects at least
    # one test of its file.
    lines = [line for line in GPU_SCRIPT.read_text().splitlines() if "-m pytest" in line]
    assert len(lines) == 4 and all(line.lstrip().startswith("timeout ") and " --all " in line for line in lines)
    for command in _script_commands("-m pytest"):
        files = [w for w in command if w.startswith("tests/")]
        expression = command[command.index("-k") + 1]
        collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "--all", "-p", "no:cacheprovider", *files]
        out = subprocess.run([*collect, "-k", expression], cwd=ROOT, capture_output=True, text=True, timeout=300)
        selected = [line for line in out.stdout.splitlines() if "::" in line]
        assert out.returncode == 0 and selected, (files, expression, out.stdout[-2000:], out.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parity
def test_benchmark_in_bfloat16_beside_timm_amp(timm_and_torch, monkeypatch, tmp_path):
    # What the GPU script asks for, shrunk to the CPU: timm runs for real in float32 and under bfloat16 autocast;
    # ours is stood in for (its bfloat16 train step is tested in test_training, and its bench process is slow).
    def run(job):
        if job["impl"] == "ours":
            return Result("ours", job["model"], job["mode"], job["batch"], job["size"], job["dtype"], 1.0, 1.0)
        return cli.run_job(job)

    monkeypatch.setattr(cli, "run_isolated", run)
    out = tmp_path / "bench.jsonl"
    argv = ["--model", "inception_v3", "--batch", "2", "--image-size", "75", "--mode", "train", "--dtype", "bfloat16",
            "--vs-timm", "--timm-amp", "--warmup", "0", "--repeats", "1", "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["dtype"]) for r in rows] == [("ours", "bfloat16"), ("timm", "float32"),
                                                       ("timm-channels_last", "float32"),
                                                       ("timm-channels_last-amp", "bfloat16")]  # fmt: skip
    assert all(r["images_per_s"] > 0 and r["step_ms"] > 0 for r in rows)
