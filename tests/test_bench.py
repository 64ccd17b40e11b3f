"""The speed benchmark runs end to end and reports what it claims (timings are not asserted: benchmarks, not
tests, carry speed targets)."""

import json

import pytest

from inception_jax import bench


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
