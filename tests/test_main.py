"""`python -m inception_jax.main`: the config files, bad configs failing early with the field's name, and an
end-to-end run plus evaluation through the command line."""

import subprocess
import sys

import jax
import pytest
from helpers import ROOT, TINY_CONFIG, env_with_devices, project_config

from inception_jax.training import default_config, validate
from inception_jax.training.state import create_model

PAPER_CONFIGS = ["inception_v3", "inception_v4", "inception_resnet_v1", "inception_resnet_v2"]
# Keys that users and sweeps override; their names are part of the interface.
SWEEP_KEYS = ["model.name", "model.depth_multiplier", "dataset.name", "image_size", "batch_size", "num_epochs",
              "num_train_steps", "learning_rate", "seed", "checkpoint_every_steps", "eval_every_steps"]


def get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_hold_the_paper_recipe(name):
    config = project_config(name)
    for key in SWEEP_KEYS:
        get(config, key)
    if "resnet" in name:
        assert tuple(config.model.residual_scales) == (0.17, 0.10, 0.20)
    assert config.model.name == name and config.dataset.name == "imagenet2012" and config.image_size == 299
    assert (config.optimizer, config.learning_rate, config.lr_decay_factor, config.lr_decay_epochs) == (
        "rmsprop", 0.045, 0.94, 2.0)
    assert (config.rmsprop_decay, config.rmsprop_epsilon, config.momentum) == (0.9, 1.0, 0.9)
    assert (config.weight_decay, config.grad_clip_norm, config.label_smoothing) == (4e-5, 2.0, 0.1)
    assert (config.aux_loss_weight, config.ema_decay, config.eval_with_ema) == (0.4, 0.9999, True)
    assert config.model.bn_momentum == 0.9997 and config.model.bn_epsilon == 1e-3
    assert config.weight_decay_biases == (name == "inception_resnet_v2")
    config.dataset.name = "fake"  # ImageNet is not on this machine; everything else must validate
    info = validate(config, device_count=8).info
    assert info.num_classes == 1000
    create_model(config, info.num_classes)


@pytest.mark.parametrize("name", ["inception_v3", "inception_v4", "inception_resnet_v1", "inception_resnet_v2"])
def test_pure_vs_residual_base_config_builds_every_network(name):
    config = project_config("pure_vs_residual")
    assert "residual_scales" not in config.model and "num_blocks" not in config.model
    config.model.name, config.dataset.name = name, "fake"
    create_model(config, validate(config, device_count=8).info.num_classes)


def test_quickstart_config_validates_as_is():
    config = project_config("quickstart")
    for key in [*SWEEP_KEYS, "model.residual_scales"]:
        get(config, key)
    info = validate(config, device_count=jax.device_count()).info
    assert info.name == "digits" and info.num_classes == 10
    model = create_model(config, info.num_classes)
    assert model.depth_multiplier < 1 and model.aux_logits


def _set(config, dotted, value):
    *path, last = dotted.split(".")
    for part in path:
        config = config[part]
    config[last] = value


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("model.name", "resnet50", "config field model.name: unknown model 'resnet50'"),
        ("dataset.name", "no_such_data_set", "config field dataset.name"),
        ("batch_size", 12, "config field batch_size must be divisible by the device count (8)"),
        ("eval_batch_size", 20, "config field eval_batch_size must be divisible by the device count (8)"),
        ("learning_rate", -0.1, "config field learning_rate must be > 0"),
        ("mode", "fit", "config field mode must be one of"),
        ("bn_statistics", "sync", "config field bn_statistics must be one of"),
        ("image_size", 64, "config field image_size must be an int >= 75"),
        ("optimizer", "adam", "config field optimizer must be one of"),
        ("num_epochs", 0.0, "config field num_epochs must be > 0"),
        ("bn_recalibration_batches", -1, "config field bn_recalibration_batches must be an int >= 0"),
    ],
)
def test_invalid_config_names_the_field(field, value, message):
    config = project_config("quickstart")
    _set(config, field, value)
    with pytest.raises(ValueError) as error:
        validate(config, device_count=8)
    assert message in str(error.value)


def test_unknown_keys_in_a_config_file_are_rejected():
    config = default_config()
    config.learning_rat = 0.1  # a typo must not be silently ignored
    with pytest.raises(ValueError, match="config field learning_rat is unknown"):
        validate(config, device_count=1)
    config = project_config("quickstart")
    config.dataset.nmae = "x"
    with pytest.raises(ValueError, match="config field dataset.nmae is unknown"):
        validate(config, device_count=1)


def test_bad_model_field_names_the_section():
    config = project_config("quickstart")
    config.model.depth_multiplier = -1.0
    info = validate(config, device_count=8).info
    with pytest.raises(ValueError, match=r"config section model: depth_multiplier must be > 0"):
        create_model(config, info.num_classes)


def run_main(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "inception_jax.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.foo=1", "config field foo is unknown"),
        ("--config.model.depth_multiplyer=0.5", "config field model.depth_multiplyer is unknown"),
        ("--config.learning_rate=-0.5", "config field learning_rate must be > 0"),
        ("--config.batch_size=12", "config field batch_size must be divisible by the device count (8)"),
    ],
)
def test_cli_rejects_bad_configs_before_doing_anything(tmp_path, override, message):
    workdir = tmp_path / "run"
    result = run_main("--config", "configs/quickstart.py", f"--workdir={workdir}", override)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not workdir.exists()  # failed before creating anything (and before compiling)


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_resumes_trains_and_evaluates(trained_run, tmp_path):
    """The command line on a copy of the session's trained run (steps 2, 4, 6 saved): more steps resume at 6 rather
    than starting over and write the run's files again; then mode=evaluate evaluates the newest checkpoint."""
    workdir = trained_run.copy(tmp_path / "run")
    rewritten = ("summary.json", "curves.png")
    for name in rewritten:
        (workdir / name).unlink()
    result = run_main(f"--config={TINY_CONFIG}", f"--workdir={workdir}", "--config.num_train_steps=8",
                      env=env_with_devices(None))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 6" in result.stderr
    assert "inception_resnet_v1 on digits: step 8/8" in result.stdout and "final top-1" in result.stdout
    for name in (*rewritten, "metrics.jsonl", "config.json", "checkpoints/8"):
        assert (workdir / name).exists(), name
    result = run_main(f"--config={TINY_CONFIG}", f"--workdir={workdir}", "--config.mode=evaluate",
                      env=env_with_devices(None))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 8: top-1" in result.stdout and "(360 examples)" in result.stdout


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(workdir):
    import json

    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_train_like_one(tmp_path):
    """jax.distributed over two local processes of 2 CPU devices each (gloo) against one process of 4: same
    batches, same steps, same evaluation over the whole split. (Fewer devices than the other tests' 8: each of the
    three processes compiles the step, and 8-way programs compile slower.)"""
    config_file = TINY_CONFIG
    common = [f"--config={config_file}", "--config.num_train_steps=2", "--config.log_every_steps=1",
              "--config.mode=train_and_evaluate"]
    single = run_main(*common, f"--workdir={tmp_path / 'one'}", env=env_with_devices(4))
    assert single.returncode == 0, single.stderr[-3000:]
    env = env_with_devices(2)
    address = f"--coordinator_address=127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen([sys.executable, "-m", "inception_jax.main", *common, f"--workdir={tmp_path / 'two'}",
                          address, "--num_processes=2", f"--process_id={i}"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "process 1 of 2, 2 local / 4 global devices" in outputs[1][1]
    assert (tmp_path / "two" / "checkpoints" / "2").exists()
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [(r["step"], r["split"]) for r in one] == [(r["step"], r["split"]) for r in two]
    for a, b in zip(one, two, strict=True):
        if a["split"] == "train":
            assert b["cross_entropy"] == pytest.approx(a["cross_entropy"], rel=1e-4)
            # The gradient all-reduce sums in another order across processes; after one update that rounding can
            # flip a near-tie (a max pool's argmax, a ReLU's sign) for single elements, a discrete change in their
            # gradients: step 1 matches to 1e-6, step 2 to 1.5e-4.
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4 if a["step"] == 1 else 1e-3)
        else:
            assert a["num_examples"] == b["num_examples"] == 360
            assert abs(a["top1"] - b["top1"]) <= 2 / 360  # argmax of nearly equal logits
