"""The speed benchmark runs end to end and reports what it claims (timings are not asserted: benchmarks, not
tests, carry speed targets)."""

import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import inception_jax
from inception_jax import bench

ROOT = Path(__file__).resolve().parents[1]


def result(impl, ips):
    return bench.Result(impl, "inception_v4", "infer", 8, 299, "float32", ips, 1000 * 8 / ips)


def test_table_gives_ratio_to_the_best_timm_mode():
    table = bench.format_table([result("ours", 6.0), result("timm", 4.0), result("timm-channels_last", 5.0)])
    ours = next(line for line in table.splitlines() if line.startswith("| ours"))
    assert ours.rstrip().endswith("| 1.20x |")


@pytest.mark.parity
def test_benchmark_runs_ours_and_timm_in_separate_processes(timm_and_torch, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    argv = ["--model", "inception_v3", "--batch", "2", "--image-size", "75", "--mode", "infer", "--vs-timm",
            "--warmup", "1", "--repeats", "2", "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in rows] == ["ours", "timm", "timm-channels_last"]
    ours = rows[0]
    assert ours["images_per_s"] > 0 and ours["compile_s"] > 0 and ours["peak_memory_gib"] > 0
    # XLA's cost analysis: 5.50 GMACs at 299 scale to about (75/299)^2 of that at 75, i.e. ~0.35 GFLOP.
    assert 0.2e9 < ours["flops_per_image"] < 0.6e9
    assert "| ours | inception_v3 | infer | 2 | 75 |" in capsys.readouterr().out


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.main(["--image-size", "64"])


def test_largest_fitting_finds_the_boundary():
    assert bench.largest_fitting(lambda n: n <= 77, start=8) == 77
    assert bench.largest_fitting(lambda n: n <= 77, start=128) == 77
    assert bench.largest_fitting(lambda n: n <= 77, start=8, step=8) in range(70, 78)
    assert bench.largest_fitting(lambda n: False) == 0
    assert bench.largest_fitting(lambda n: True, limit=300) == 300


def test_remat_shrinks_the_activations_kept_for_backward():
    # JAX's accounting of the gradient's residuals (traced, not compiled): per-block remat keeps block outputs only.
    plain = bench.saved_activation_bytes(bench.models.create("inception_v4"), 8, 299)
    remat = bench.saved_activation_bytes(bench.models.create("inception_v4", remat=True), 8, 299)
    # ~1.3 GiB at batch 8: each conv's output once (the fused BatchNorm + ReLU recomputes the rest from it) and the
    # stored inputs of XLA's own convolutions
    assert 1.0 * 2**30 < plain < 1.5 * 2**30
    assert remat < plain / 6


def test_max_batch_reports_without_and_with_remat(monkeypatch, tmp_path, capsys):
    # A stand-in memory model: 1 GiB fixed plus 0.1 GiB per image, a third of that with remat.
    monkeypatch.setattr(bench, "train_step_bytes",
                        lambda name, n, size, dtype, remat: 2**30 * (1 + n * (0.1 / 3 if remat else 0.1)))  # fmt: skip
    out = tmp_path / "max.jsonl"
    assert bench.main(["--max-batch", "--memory-gib", "5", "--batch-step", "1", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["remat"], r["max_batch"]) for r in rows] == [(False, 40), (True, 120)]


def test_max_batch_without_a_memory_limit_asks_for_one(capsys):
    assert bench.main(["--max-batch"]) == 2
    assert "--memory-gib" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_command_line_restarts_with_our_malloc_settings():
    """`python -m inception_jax.bench` (and .main) restart once with `MALLOC_TUNABLES`; an opt-out keeps the
    environment as it was."""
    command = [sys.executable, "-m", "inception_jax.bench", "--model", "inception_v3", "--mode", "infer", "--batch",
               "1", "--image-size", "75", "--warmup", "0", "--repeats", "1"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "INCEPTION_JAX_KEEP_MALLOC")}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            expected = "[never]" not in f.read()
    except OSError:
        expected = False
    tunables = ":".join(inception_jax.MALLOC_TUNABLES)
    assert (f"GLIBC_TUNABLES='{tunables}' (ours)" in out.stdout) == expected, out.stdout


def test_malloc_tunables_add_only_what_the_user_did_not_set():
    ours = ":".join(inception_jax.MALLOC_TUNABLES)
    assert inception_jax.malloc_tunables("") == ours
    assert inception_jax.malloc_tunables(ours) is None
    mixed = inception_jax.malloc_tunables("glibc.pthread.rseq=0:glibc.malloc.arena_max=4")
    parts = mixed.split(":")
    assert parts[:2] == ["glibc.pthread.rseq=0", "glibc.malloc.arena_max=4"]
    assert sorted(parts[2:]) == sorted(t for t in inception_jax.MALLOC_TUNABLES if "arena_max" not in t)


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


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_malloc_settings_stop_page_faults_after_the_first_steps():
    """Blocks freed by one step are reused by the next instead of being unmapped and faulted in again (with huge
    pages alone, glibc still maps each large block afresh)."""

    def faults(tunables: str) -> int:
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"GLIBC_TUNABLES": tunables}
        out = subprocess.run([sys.executable, "-c", _FAULTS_PROGRAM], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    huge_pages_only = faults(inception_jax.MALLOC_TUNABLES[0])
    ours = faults(":".join(inception_jax.MALLOC_TUNABLES))
    assert huge_pages_only > 1000, huge_pages_only  # 10 x 64 MiB freshly mapped: 5k faults here
    assert ours * 5 < huge_pages_only, (ours, huge_pages_only)  # 32-256 here


def test_timm_runs_without_our_malloc_settings(monkeypatch):
    seen = {}

    def fake_run(command, env, **kwargs):
        seen[json.loads(command[-1])["impl"]] = env
        return subprocess.CompletedProcess(command, 0, json.dumps(result("ours", 1.0).__dict__) + "\n")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setenv("GLIBC_TUNABLES", inception_jax.malloc_tunables("glibc.malloc.arena_max=2"))
    bench.run_isolated({"impl": "ours"})
    bench.run_isolated({"impl": "timm"})
    assert inception_jax.MALLOC_TUNABLES[0] in seen["ours"]["GLIBC_TUNABLES"]
    assert seen["timm"]["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    assert seen["timm"]["INCEPTION_JAX_KEEP_MALLOC"] == "1"


_CONV_GRADIENT_PROGRAM = """
import jax
import jax.numpy as jnp
from jax import lax

{imports}
x, w = jnp.ones((2, 9, 9, 32)), jnp.ones((3, 3, 32, 64))  # 4 -> 8 channels stayed out of YNNPACK anyway
loss = lambda w: jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = jax.jit(jax.grad(loss)).lower(w).compile().as_text()
print("YNN", hlo.count("__ynn_fusion"))
"""


def _run_conv_gradient(imports: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "INCEPTION_JAX_KEEP_XLA_FLAGS")}
    env.update(env_overrides)
    program = _CONV_GRADIENT_PROGRAM.format(imports=imports)
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_xla_cpu_flags_apply_when_jax_was_imported_first():
    """A script that imports jax before inception_jax still gets our CPU flags (XLA reads them when the backend
    starts, not at import): its convolutions stay out of YNNPACK (forward + weight
    gradient of a 147x147 32 -> 64 conv, b8: 686 ms there, 139 ms in XLA's own)."""
    ours = _run_conv_gradient("import inception_jax")
    assert "YNN 0" in ours.stdout, ours.stdout
    assert "too late" not in ours.stderr
    untouched = _run_conv_gradient("import inception_jax", INCEPTION_JAX_KEEP_XLA_FLAGS="1")
    if "YNN 0" in untouched.stdout:
        pytest.skip("this XLA no longer sends convolutions to YNNPACK by default; nothing to tell apart")


def test_importing_after_the_backend_started_warns():
    out = _run_conv_gradient("jax.devices()\nimport inception_jax")
    assert "too late to set XLA_FLAGS" in out.stderr and "xla_cpu_experimental_ynn_fusion_type" in out.stderr
    quiet = _run_conv_gradient("jax.devices()\nimport inception_jax", INCEPTION_JAX_KEEP_XLA_FLAGS="1")
    assert "too late" not in quiet.stderr


def test_rounds_alternate_the_processes_and_report_medians(monkeypatch, tmp_path, capsys):
    # Ours takes 1000, 1400, 1100 ms over three rounds, timm channels_last 1200 ms each time, plain timm 2000 ms.
    ours_ms = iter([1000.0, 1400.0, 1100.0])
    order = []

    def fake_run_isolated(job):
        impl = job["impl"] if job["impl"] == "ours" else "timm" + "-channels_last" * job["channels_last"]
        order.append(impl)
        ms = next(ours_ms) if impl == "ours" else 1200.0 if job["channels_last"] else 2000.0
        return bench.Result(impl, job["model"], job["mode"], job["batch"], job["size"], "float32",
                            job["batch"] / ms * 1e3, ms, peak_memory_gib=float(len(order)))  # fmt: skip

    monkeypatch.setattr(bench, "run_isolated", fake_run_isolated)
    monkeypatch.setitem(sys.modules, "timm", object())
    out = tmp_path / "bench.jsonl"
    argv = ["--model", "inception_v4", "--batch", "8", "--mode", "train", "--vs-timm", "--rounds", "3",
            "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    forward = ["ours", "timm", "timm-channels_last"]
    assert order == forward + forward[::-1] + forward
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["round"], r["rounds"]) for r in rows][:4] == [
        ("ours", 0, 3), ("timm", 0, 3), ("timm-channels_last", 0, 3), ("timm-channels_last", 1, 3)]  # fmt: skip
    printed = capsys.readouterr().out
    ours = next(line for line in printed.splitlines() if line.startswith("| ours"))
    # Median 1100 ms against timm channels_last's 1200 ms; peak memory the largest of ours' three processes (7).
    assert "| 1100 |" in ours and ours.rstrip().endswith("| 1.09x |") and "| 7.00 |" in ours
    assert "inception_v4 train b8@299: ours / best timm by round 1.20x, 0.86x, 1.09x" in printed


def test_summary_keeps_single_runs_as_they_are():
    rows = [result("ours", 6.0), result("timm", 4.0)]
    assert bench.summarise(rows) == [dataclasses.replace(r, rounds=1) for r in rows]


@pytest.mark.parametrize("flag", [["--rounds", "0"], ["--repeats", "0"], ["--warmup", "-1"]])
def test_bad_repetition_counts_are_refused(flag, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--model", "inception_v4", *flag])
    assert "must be >= 1" in capsys.readouterr().err


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _row(impl, model, ms, **extra):
    return dict(impl=impl, model=model, mode="train", batch=8, image_size=299, dtype="float32",
                images_per_s=8 / ms * 1e3, step_ms=ms, **extra)  # fmt: skip


def test_report_reads_runs_saved_before_rounds_were_recorded(tmp_path, capsys):
    # Two runs in one file, written before the `round` field existed: ours 1000 then 1400 ms, timm 1200 then 1000.
    old = tmp_path / "old.jsonl"
    _write_rows(old, [_row("ours", "inception_v4", 1000.0), _row("timm", "inception_v4", 1200.0),
                      _row("ours", "inception_v4", 1400.0), _row("timm", "inception_v4", 1000.0)])  # fmt: skip
    loaded = bench.load_results(str(old))
    assert [(r.impl, r.round, r.rounds) for r in loaded] == [("ours", 0, 2), ("timm", 0, 2), ("ours", 1, 2),
                                                             ("timm", 1, 2)]  # fmt: skip
    assert bench.main(["--report", str(old)]) == 0
    printed = capsys.readouterr().out
    # Medians over the two runs: ours 1200 ms, timm 1100 ms; by round 1.20x and 0.71x.
    ours = next(line for line in printed.splitlines() if line.startswith("| ours"))
    assert "| 1200 |" in ours and ours.rstrip().endswith("| 0.92x |")
    assert "inception_v4 train b8@299: ours / best timm by round 1.20x, 0.71x" in printed


def test_report_of_several_files_gives_one_ratio_row_per_file(tmp_path, capsys):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    _write_rows(first, [_row("ours", "inception_v4", 1000.0), _row("timm-channels_last", "inception_v4", 800.0),
                        _row("timm", "inception_v4", 1500.0)])  # fmt: skip
    _write_rows(second, [_row("ours", "inception_resnet_v2", 500.0, round=0, rounds=1),
                         _row("timm", "inception_resnet_v2", 1000.0, round=0, rounds=1)])  # fmt: skip
    assert bench.main(["--report", str(first), str(second)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| results | v4 train b8@299 | IR-v2 train b8@299 |"
    assert lines[2:] == [f"| {first} | 0.80x | — |", f"| {second} | — | 2.00x |"]


def test_report_refuses_missing_and_foreign_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--report", str(tmp_path / "nope.jsonl")])
    assert "no such file" in capsys.readouterr().err
    foreign = tmp_path / "metrics.jsonl"
    foreign.write_text(json.dumps(_row("ours", "inception_v4", 1000.0)) + "\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(SystemExit):
        bench.main(["--report", str(foreign)])
    assert "metrics.jsonl:2 is not a benchmark result" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SystemExit):
        bench.main(["--report", str(empty)])
    assert "holds no benchmark results" in capsys.readouterr().err


def test_readme_ratio_history_is_the_saved_results():
    # The README's table of ratios, regenerated from the committed result files it names.
    readme = (ROOT / "README.md").read_text().splitlines()
    start = readme.index(next(line for line in readme if line.startswith("| results | v4 train b8@299")))
    rows = []
    for line in readme[start + 2:]:
        if not line.startswith("| bench_"):
            break
        rows.append(line)
    assert len(rows) >= 10
    results = ROOT / "experiments" / "results"
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    files = {name: bench.load_results(str(results / name)) for name in names}
    assert bench.ratio_history(files).splitlines()[2:] == rows


def test_gpu_script_asks_the_benchmark_for_what_it_accepts():
    # The GPU script runs unattended on a lent machine: its bench command lines must parse (a typo there would cost
    # the whole device session), with the settings the issue asks for.
    script = (ROOT / "experiments" / "gpu_benchmark.sh").read_text().replace("\\\n", " ")
    commands = [line.split("python -m inception_jax.bench", 1)[1] for line in script.splitlines()
                if "python -m inception_jax.bench" in line]  # fmt: skip
    words = lambda command: [w.replace("$model", "inception_v4").replace("$out", "o")
                             for w in command.replace('"', "").split() if not w.startswith("${")]  # fmt: skip
    parsed = [bench.build_parser().parse_args(words(command)) for command in commands]
    assert len(parsed) == 2
    assert all((args.image_size, args.dtype, args.batch) == (299, "bfloat16", 128) for args in parsed)
    timed, max_batch = parsed
    assert timed.mode == "train" and timed.vs_timm and timed.timm_amp and timed.json and not timed.max_batch
    assert max_batch.max_batch


@pytest.mark.parity
def test_benchmark_in_bfloat16_beside_timm_amp(timm_and_torch, monkeypatch, tmp_path):
    # What the GPU script asks for, shrunk to the CPU: timm runs for real in float32 and under bfloat16 autocast;
    # ours is stood in for (its bfloat16 train step is tested in test_training; its bench process took 75 s here).
    def run(job):
        if job["impl"] == "ours":
            return bench.Result("ours", job["model"], job["mode"], job["batch"], job["size"], job["dtype"], 1.0, 1.0)
        return bench.run_job(job)

    monkeypatch.setattr(bench, "run_isolated", run)
    out = tmp_path / "bench.jsonl"
    argv = ["--model", "inception_v3", "--batch", "2", "--image-size", "75", "--mode", "train", "--dtype", "bfloat16",
            "--vs-timm", "--timm-amp", "--warmup", "0", "--repeats", "1", "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["impl"], r["dtype"]) for r in rows] == [("ours", "bfloat16"), ("timm", "float32"),
                                                       ("timm-channels_last", "float32"),
                                                       ("timm-channels_last-amp", "bfloat16")]  # fmt: skip
    assert all(r["images_per_s"] > 0 and r["step_ms"] > 0 for r in rows)
