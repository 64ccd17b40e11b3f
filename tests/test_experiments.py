"""The experiment scripts: the residual-scale sweep launcher and the pure-vs-residual summary."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import ROOT, TINY_CONFIG, env_with_devices, load_script, one_device_mesh, project_config

from inception_jax.data import default_dataset_config
from inception_jax.training import loop

runs = load_script("launch")  # the experiment scripts' shared helpers

FASHION_MNIST_DIR = default_dataset_config().fashion_mnist_dir
pure_vs_residual = load_script("pure_vs_residual")
residual_scale_sweep = load_script("residual_scale_sweep")


@pytest.mark.slow
@pytest.mark.subprocess
def test_sweep_runs_one_workdir_per_scale_with_its_overrides(tmp_path):
    command = [
        sys.executable, str(ROOT / "experiments" / "residual_scale_sweep.py"), "--scales", "0.1,1.0",
        "--model", "inception_resnet_v1", "--config", TINY_CONFIG, "--workdir", str(tmp_path),
        "--config.num_train_steps=2", "--config.eval_every_steps=2", "--config.checkpoint_every_steps=2",
        "--config.log_every_steps=1", "--config.model.num_blocks=(1,1,1)",
    ]  # fmt: skip
    # One device: the sweep's runs are not about sharding, and 8 compile slower.
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True, env=env_with_devices(None))
    for scale in (0.1, 1.0):
        workdir = tmp_path / f"scale_{scale:g}"
        config = json.loads((workdir / "config.json").read_text())
        assert config["model"]["name"] == "inception_resnet_v1"
        assert config["model"]["residual_scales"] == [scale] * 3
        run = runs.read_run(workdir)
        assert [r["step"] for r in run["train"]] == [1, 2] and len(run["eval"]) == 1
        assert 0.0 <= run["last_dead_fraction"] <= 1.0
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["scale"] for r in rows] == [0.1, 1.0]
    assert (tmp_path / "sweep.png").stat().st_size > 0
    assert "| 0.1 |" in (tmp_path / "sweep.md").read_text()


@pytest.mark.slow
@pytest.mark.subprocess
def test_evaluate_script_reproduces_the_runs_final_evaluation(trained_run, tmp_path):
    """experiments/evaluate.py on a checkpoint gives the run's own final evaluation, and writes JSON beside it."""
    workdir = trained_run.copy(tmp_path / "run")
    evaluate = [sys.executable, str(ROOT / "experiments" / "evaluate.py"), "--workdir", str(workdir), "--batch", "40"]
    subprocess.run(evaluate, check=True, cwd=ROOT, capture_output=True, text=True, env=env_with_devices(None))
    result = json.loads((workdir / "eval_digits_test_1crop.json").read_text())
    final = runs.read_run(workdir)
    assert result["num_examples"] == 360 and result["crops"] == 1 and result["model"] == "inception_resnet_v1"
    assert result["top1_error"] == pytest.approx(100 - final["final_top1"])
    assert result["top5_error"] == pytest.approx(100 - final["final_top5"])
    assert result["bn_recalibration_batches"] == 0

    # With BatchNorm recalibration: the result says so and equals the training loop's evaluation recalibrated alike.
    subprocess.run([*evaluate, "--bn-recalibration", "4"], check=True, cwd=ROOT, capture_output=True, text=True,
                   env=env_with_devices(None))
    result = json.loads((workdir / "eval_digits_test_1crop.json").read_text())
    looped = loop.evaluate(trained_run.config(mode="evaluate", bn_recalibration_batches=4), str(workdir),
                           mesh=one_device_mesh())
    assert result["bn_recalibration_batches"] == looped["bn_recalibration_batches"] == 4
    assert result["top1_error"] == pytest.approx(100 * (1 - looped["top1"]), abs=100 / 360)


def test_sweep_refuses_a_config_without_residual_scales(capsys, tmp_path):
    with pytest.raises(SystemExit):
        residual_scale_sweep.main(["--scales", "0.1", "--workdir", str(tmp_path),
                                   "--config", str(ROOT / "configs" / "pure_vs_residual.py")])  # fmt: skip
    assert "has no model.residual_scales" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_launch_reports_failed_runs_and_goes_on(tmp_path, capsys):
    fail = [sys.executable, "-c", "import sys; sys.exit(3)", f"--workdir={tmp_path / 'a'}"]
    succeed = [sys.executable, "-c", "pass", f"--workdir={tmp_path / 'b'}"]
    failed = runs.launch([fail, succeed], dry_run=False, log_dir=tmp_path / "logs")
    assert failed == [tmp_path / "logs" / "a.log"] and (tmp_path / "logs" / "b.log").exists()
    assert runs.report_failures(failed, 2) == 1 and runs.report_failures([], 2) == 0
    assert "1 of 2 runs failed" in capsys.readouterr().err


def test_sweep_dry_run_prints_one_command_per_scale(capsys, tmp_path):
    config = str(ROOT / "configs" / "quickstart.py")
    residual_scale_sweep.main(
        ["--scales", "0.05,0.3", "--workdir", str(tmp_path), "--dry-run", "--config", config, "--config.num_epochs=2"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "--config.model.residual_scales=(0.05,0.05,0.05)" in lines[0] and "scale_0.3" in lines[1]
    assert all("--config.num_epochs=2" in line for line in lines)
    assert not (tmp_path / "scale_0.05").exists()


@pytest.mark.parametrize("scales", ["0.1,-1", "a,b", ""])
def test_sweep_rejects_bad_scales(scales, tmp_path):
    with pytest.raises(SystemExit):
        residual_scale_sweep.main(["--scales", scales, "--workdir", str(tmp_path), "--dry-run"])


def write_run(workdir: Path, evals: list[tuple[int, float, float]], dead: list[float], losses: list[float]):
    workdir.mkdir(parents=True)
    records = [{"step": i + 1, "split": "train", "epoch": (i + 1) / 10, "loss": loss, "dead_fraction": d,
                "accuracy": 0.5}
               for i, (d, loss) in enumerate(zip(dead, losses, strict=True))]  # fmt: skip
    records += [{"step": s, "split": "eval", "top1": t1, "top5": t5} for s, t1, t5 in evals]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_run_finds_death_and_divergence(tmp_path):
    write_run(tmp_path / "a", [(10, 0.5, 0.9), (20, 0.25, 0.8)], [0.995, 0.995, 1.0], [2.0, float("nan"), 1.0])
    run = runs.read_run(tmp_path / "a")
    assert run["died_step"] == 1 and run["diverged_step"] == 2
    assert run["final_top1"] == 25.0 and run["best_top1"] == 50.0 and run["steps_per_epoch"] == 10
    assert runs.read_run(tmp_path / "missing")["missing"]


def test_read_run_reports_a_divergence_as_such_not_as_a_death(tmp_path):
    """A run that stopped on a non-finite loss diverged; all-dead channels logged at or after that step are not a
    death. Channels that all die before it are, at the first step that reads 1.0."""
    write_run(tmp_path / "a", [(3, 0.1, 0.5)], [0.5, 0.5, 1.0], [2.0, 1.5, float("nan")])
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record, channels in zip(records, [0.2, 0.5, 1.0, None], strict=True):
        if channels is not None:
            record["dead_channels"] = channels
    (tmp_path / "a" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = runs.read_run(tmp_path / "a")
    assert run["diverged_step"] == 3 and run["died_step"] is None and run["channels_died_step"] is None
    assert run["last_dead_channels"] == 1.0
    write_run(tmp_path / "b", [(3, 0.1, 0.5)], [0.5, 0.5, 0.5], [2.0, 1.5, 1.4])
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    for record, channels in zip(records, [0.9, 1.0, 1.0, None], strict=True):
        if channels is not None:
            record["dead_channels"] = channels
    (tmp_path / "b" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert runs.read_run(tmp_path / "b")["channels_died_step"] == 2


def test_pure_vs_residual_table_and_plots(tmp_path):
    write_run(tmp_path / "inception_v3", [(10, 0.5, 0.9), (20, 0.6, 0.95)], [0.1] * 2, [1.0] * 2)
    write_run(tmp_path / "inception_resnet_v1", [(10, 0.7, 0.9), (20, 0.8, 0.99)], [0.1] * 2, [1.0] * 2)
    markdown = pure_vs_residual.summarize(tmp_path, ["v3", "v4"])
    assert "| 1 | 50.00 / 10.00 | 30.00 / 10.00 |" in markdown
    assert "| 2 | 40.00 / 5.00 | 20.00 / 1.00 |" in markdown
    assert "inception_v4 vs inception_resnet_v2: not run yet" in markdown
    assert (tmp_path / "inception_v3_vs_inception_resnet_v1.png").stat().st_size > 0
    # The measured claim: v3 ends at 40% top-1 error, first reached at step 20; IR-v1 is at 30% by step 10.
    assert "final top-1 test error (40.00%) at step 10, against step 20: **ratio 0.50**" in markdown


def test_speedup_ratio_when_the_residual_network_never_gets_there(tmp_path):
    write_run(tmp_path / "inception_v4", [(10, 0.5, 0.9), (20, 0.8, 0.95), (30, 0.7, 0.95)], [0.1] * 3, [1.0] * 3)
    write_run(tmp_path / "inception_resnet_v2", [(10, 0.6, 0.9), (20, 0.65, 0.99), (30, 0.69, 0.99)], [0.1] * 3,
              [1.0] * 3)
    pure, residual = (runs.read_run(tmp_path / name) for name in ("inception_v4", "inception_resnet_v2"))
    claim = pure_vs_residual.speedup_ratio(pure, residual)
    assert claim["target_top1_error"] == pytest.approx(30.0) and claim["pure_steps"] == 20  # 20% error at 20 counts
    assert claim["residual_steps"] is None and claim["ratio"] is None
    assert "never reached Inception-v4's final top-1 test error (30.00%" in pure_vs_residual.summarize(tmp_path, ["v4"])


def test_rerun_skips_finished_networks_and_resumes_the_others(tmp_path, monkeypatch, capsys):
    """inception_v3 finished (summary.json at its last step), inception_resnet_v1 preempted with a checkpoint: a
    rerun launches main only for the second, in its own workdir (where main resumes from the checkpoint), and keeps
    the results of each finished one."""
    for name, summary in (("inception_v3", {"step": 40, "total_steps": 40, "preempted": False}),
                          ("inception_resnet_v1", {"step": 17, "total_steps": 40, "preempted": True})):
        write_run(tmp_path / name, [(10, 0.5, 0.9)], [0.1], [1.0])
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
        (tmp_path / name / "checkpoints" / str(summary["step"])).mkdir(parents=True)
    launched, kept = [], []

    def fake_launch(commands, dry_run, log_dir):
        launched.extend(commands)
        (tmp_path / "inception_resnet_v1" / "summary.json").write_text(
            json.dumps({"step": 40, "total_steps": 40, "preempted": False}))  # as the resumed run would
        return []

    monkeypatch.setattr(pure_vs_residual, "launch", fake_launch)
    monkeypatch.setattr(pure_vs_residual, "keep_results", lambda workdir, results: kept.append(workdir.name) or [])
    code = pure_vs_residual.main(["--config", str(ROOT / "configs" / "fashion_mnist_pure_vs_residual.py"),
                                  "--workdir", str(tmp_path), "--pairs", "v3", "--results", str(tmp_path / "kept")])
    assert code == 0
    assert len(launched) == 1 and f"--workdir={tmp_path / 'inception_resnet_v1'}" in launched[0]
    assert "--config.model.name=inception_resnet_v1" in launched[0]
    assert "inception_v3: finished" in capsys.readouterr().out
    assert kept == ["inception_v3", "inception_resnet_v1"]


@pytest.mark.slow
def test_bn_statistics_script_compares_the_three_kinds_of_statistics(trained_run, tmp_path, capsys):
    """experiments/bn_statistics.py on the session's trained run: with the EMA weights and their stored statistics
    it reproduces the run's own final evaluation; every BatchNorm layer on the evaluation's path gets a row, in the
    network's order; the batch-statistics evaluation counts the whole test split (360 = 9 full batches of 40)."""
    out = tmp_path / "bn.json"
    load_script("bn_statistics").main(["--workdir", str(trained_run.workdir), "--batches", "3", "--by-block",
                                       "--out", str(out)])
    print(capsys.readouterr().out)
    result = json.loads(out.read_text())
    final = trained_run.final_eval()
    assert result["step"] == 6 and result["recalibration_batches"] == 3
    assert result["errors"]["ema"]["stored"]["top1_error"] == pytest.approx(100 * (1 - final["top1"]))
    assert result["errors"]["ema"]["batch"]["num_examples"] == 360
    batch_stats = trained_run.state(6).batch_stats
    layers = (len(jax.tree.leaves(batch_stats)) - len(jax.tree.leaves(batch_stats["AuxLogits"]))) // 2
    assert [len(result["layers"][w]) for w in ("raw", "ema")] == [layers, layers]  # all but the aux head's
    assert result["layers"]["raw"][0]["layer"].startswith("Stem/")
    assert all(np.isfinite(r["max_abs_log_var_ratio"]) for r in result["layers"]["raw"])
    # From no block recalibrated (the stored statistics) to all of them (the recalibrated evaluation).
    for weights in ("raw", "ema"):
        rows, errors = result["by_block"][weights], result["errors"][weights]
        assert rows[0]["recalibrated_through"] is None and rows[1]["recalibrated_through"] == "Stem"
        assert rows[0]["top1_error"] == pytest.approx(errors["stored"]["top1_error"])
        assert rows[-1]["top1_error"] == pytest.approx(errors["recalibrated"]["top1_error"])


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_pure_vs_residual_smoke_run_on_fashion_mnist(tmp_path):
    """The Fashion-MNIST experiment's command for two steps of one network (Inception-ResNet-v1, the quickest to
    compile): it trains, evaluates the finished run into --results, summarises, and a rerun skips it."""
    config = ROOT / "configs" / "fashion_mnist_pure_vs_residual.py"
    command = [sys.executable, str(ROOT / "experiments" / "pure_vs_residual.py"), "--config", str(config),
               "--workdir", str(tmp_path / "w"), "--pairs", "v3", "--networks", "inception_resnet_v1",
               "--results", str(tmp_path / "results"), "--config.num_train_steps=2", "--config.eval_every_steps=2",
               "--config.log_every_steps=1", "--config.bn_recalibration_batches=2"]  # fmt: skip
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env_with_devices(None))
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    result = json.loads((tmp_path / "results" / "inception_resnet_v1.eval_1crop.json").read_text())
    assert result["num_examples"] == 10_000 and result["dataset"] == "fashion_mnist"
    assert result["bn_recalibration_batches"] == 2 and result["steps"] == [2]
    assert result["sources"] == ["inception_resnet_v1"]  # the run's name, no path of this machine
    run = runs.read_run(tmp_path / "results" / "inception_resnet_v1.metrics.jsonl")
    assert [r["step"] for r in run["train"]] == [1, 2] and run["eval"][-1]["bn_recalibration_batches"] == 2
    assert result["top1_error"] == pytest.approx(100 - run["final_top1"])
    assert "inception_v3 vs inception_resnet_v1: not run yet" in first.stdout
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env_with_devices(None))
    assert second.returncode == 0 and "inception_resnet_v1: finished" in second.stdout, second.stderr[-3000:]


def test_wide_residual_accelerator_config_dry_runs_one_command_per_scale(capsys):
    """The paper's wide-residual setting (full Inception-ResNet-v2, ImageNet) prints its four runs without data."""
    argv = ["--model", "inception_resnet_v2", "--scales", "0.1,0.2,0.3,1.0", "--config",
            str(ROOT / "configs" / "wide_residual_imagenet.py"), "--workdir", "runs/wide", "--dry-run"]  # fmt: skip
    assert residual_scale_sweep.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "inception_jax.main" in line]
    assert len(lines) == 4 and "--config.model.residual_scales=(1.0,1.0,1.0)" in lines[-1]
    config = project_config("wide_residual_imagenet")
    assert (config.model.name, config.model.variant, config.dataset.name) == ("inception_resnet_v2", "released",
                                                                             "imagenet2012")  # fmt: skip
    assert config.num_train_steps == 50_000 and config.model.depth_multiplier == 1.0


def test_wide_residual_cpu_config_is_full_width_and_dry_runs(capsys):
    argv = ["--model", "inception_resnet_v2", "--scales", "1.0,0.2", "--config",
            str(ROOT / "configs" / "wide_residual_fashion_mnist.py"), "--workdir", "runs/w", "--dry-run"]  # fmt: skip
    assert residual_scale_sweep.main(argv) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if "inception_jax.main" in line]) == 2
    config = project_config("wide_residual_fashion_mnist")
    assert config.model.depth_multiplier == 1.0 and "num_blocks" not in config.model  # every block, full width
    assert config.log_every_steps <= 25 and config.dataset.name == "fashion_mnist"


def test_sweep_rerun_skips_finished_scales_and_keeps_each_result(tmp_path, monkeypatch, capsys):
    """Scale 1 finished, scale 0.2 preempted: a rerun launches only 0.2 (which resumes in its workdir), copies each
    finished run's metrics to --results as it finishes and summarizes there."""
    summaries = {1.0: {"step": 3, "total_steps": 3}, 0.2: {"step": 2, "total_steps": 3, "preempted": True}}
    for scale, summary in summaries.items():
        workdir = residual_scale_sweep.run_dir(tmp_path / "runs", scale)
        write_run(workdir, [(3, 0.5, 0.9)], [0.1, 0.2, 0.3], [2.0, 1.5, 1.0])
        (workdir / "summary.json").write_text(json.dumps(summary))
    launched, kept_when_launched = [], []

    def fake_launch(commands, dry_run, log_dir):
        launched.extend(commands)
        kept_when_launched.extend(p.name for p in (tmp_path / "kept").glob("*"))
        (residual_scale_sweep.run_dir(tmp_path / "runs", 0.2) / "summary.json").write_text(
            json.dumps({"step": 3, "total_steps": 3}))  # as the resumed run would
        return []

    monkeypatch.setattr(residual_scale_sweep, "launch", fake_launch)
    code = residual_scale_sweep.main(["--scales", "1.0,0.2", "--config", str(ROOT / "configs" / "quickstart.py"),
                                      "--workdir", str(tmp_path / "runs"), "--results", str(tmp_path / "kept")])
    assert code == 0
    assert len(launched) == 1 and "--config.model.residual_scales=(0.2,0.2,0.2)" in launched[0]
    assert kept_when_launched == ["scale_1.metrics.jsonl"]  # the finished run was kept before the next one ran
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.metrics.jsonl")) == ["scale_0.2.metrics.jsonl",
                                                                                  "scale_1.metrics.jsonl"]
    assert "scale 1: finished" in capsys.readouterr().out
    assert "| 1 | 50.00 |" in (tmp_path / "kept" / "sweep.md").read_text()


def test_sweep_curves_follow_each_run_by_step(tmp_path):
    """The per-step picture's data: loss and dead channels, one run dying (all channels zero at step 2), one
    diverging at step 3; the summary draws both."""
    for name, channels, losses in (("scale_1", [0.5, 1.0, 1.0], [2.0, 1.9, 1.8]),
                                   ("scale_0.2", [0.1, 0.2, 0.3], [2.0, 1.5, float("nan")])):
        records = [{"step": s, "split": "train", "loss": loss, "dead_fraction": 0.5, "dead_channels": c}
                   for s, c, loss in zip((1, 2, 3), channels, losses, strict=True)]  # fmt: skip
        (tmp_path / f"{name}.metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = residual_scale_sweep.summarize(tmp_path, [1.0, 0.2])
    assert rows[0]["channels_died_step"] == 2 and rows[0]["diverged_step"] is None
    assert rows[1]["diverged_step"] == 3 and rows[1]["channels_died_step"] is None
    curve = residual_scale_sweep.curves(rows[0])
    assert curve["step"] == [1, 2, 3] and curve["dead_channels"] == [0.5, 1.0, 1.0]
    assert curve["loss"] == [2.0, 1.9, 1.8]
    assert (tmp_path / "sweep_curves.png").stat().st_size > 0
