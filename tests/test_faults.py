"""Faults a long run must survive without losing anything (docs/faults.md): a non-finite loss (stop and skip),
damaged checkpoints, a SIGKILL during an asynchronous save, a changed config on resume and bad images. The tests
that need a run copy the session's trained workdir (conftest.trained_run: steps 2, 4 and 6 saved)."""

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import ROOT, TINY_CONFIG, env_with_devices, one_device_mesh, tiny_config
from PIL import Image

from inception_jax import data
from inception_jax.training import checkpoints, loop, sharding
from inception_jax.training import config as config_lib
from inception_jax.training.metrics import read_jsonl

STATE_PARTS = ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats", "rng")
ONE_DEVICE = env_with_devices(None)


def keep_states(states):
    """A step_callback that keeps every step's state on the host."""
    return lambda step, state: states.__setitem__(step, jax.device_get(state))


def assert_states_equal(a, b):
    assert int(a.step) == int(b.step)
    for part in STATE_PARTS:
        jax.tree.map(np.testing.assert_array_equal, getattr(a, part), getattr(b, part))


def messages(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def structure_only_run(workdir, config, steps=(2, 4, 6)):
    """A workdir as check_resume_config sees it: config.json and the checkpoints' step directories (it reads their
    names only), without training."""
    for step in steps:
        os.makedirs(os.path.join(workdir, "checkpoints", str(step)))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    return str(workdir)


def main_command(*args):
    """`python -m inception_jax.main` on one device (compiles faster; its programs are shared through the
    persistent cache by the tests that run it)."""
    return [sys.executable, "-m", "inception_jax.main", f"--config={TINY_CONFIG}", "--config.mode=train", *args]


def run_main(*args):
    """(exit code, the "error:" lines of stderr, stderr)."""
    result = subprocess.run(main_command(*args), cwd=ROOT, env=ONE_DEVICE, capture_output=True, text=True,
                            timeout=600)
    return result.returncode, [x for x in result.stderr.splitlines() if x.startswith("error:")], result.stderr


# --- non-finite loss ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_nan_stop_keeps_the_good_checkpoints_and_exits_3(trained_run, tmp_path):
    """A healthy run to step 6, then the same workdir with learning_rate 1e12."""
    workdir = str(trained_run.copy(tmp_path / "run"))
    code, [line], err = run_main(f"--workdir={workdir}", "--config.checkpoint_every_steps=2",
                                 "--config.num_train_steps=20", "--config.learning_rate=1e12")
    print(line)
    assert code == 3, err[-3000:]
    assert "non-finite loss" in line and "nan_policy=stop" in line and "stopped without saving" in line
    assert "Traceback" not in err
    assert "config changed since" in err and "learning_rate 0.045 -> 1e+12" in err  # a safe change, logged
    records = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
    steps_saved = checkpoints.saved_steps(os.path.join(workdir, "checkpoints"))
    bad_step = int(line.split(" at step ")[1].split()[0])
    good = max(steps_saved)
    assert good < bad_step and f"last good checkpoint is step {good} ({workdir}/checkpoints/{good})" in line
    # The good checkpoint restores and holds only finite numbers.
    config = tiny_config(learning_rate=1e12)
    experiment = loop.Experiment(config)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    state, meta = ckpt.restore(experiment.abstract_state)
    ckpt.close()
    assert meta["step"] == good
    parts = jax.device_get([getattr(state, part) for part in STATE_PARTS[:-1]])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(parts))
    # metrics.jsonl ends with the step that stopped the run (for the experiment scripts' divergence column).
    assert records[-1]["step"] == bad_step and records[-1]["skipped"] == 1 and not np.isfinite(records[-1]["loss"])
    assert all(np.isfinite(r["loss"]) for r in records[:-1])


@pytest.mark.slow
@pytest.mark.subprocess
def test_nan_skip_drops_the_update_and_stops_after_max_skips(trained_run, tmp_path):
    """The same blow-up under nan_policy=skip, a checkpoint at every step: the skipped steps' checkpoints hold the
    state of the last finite step (only the step counter moved on), and the third skip in a row stops the run."""
    workdir = str(trained_run.copy(tmp_path / "run"))
    code, [line], err = run_main(f"--workdir={workdir}", "--config.checkpoint_every_steps=1",
                                 "--config.keep_checkpoints=20", "--config.num_train_steps=20",
                                 "--config.log_every_steps=1", "--config.learning_rate=1e12",
                                 "--config.nan_policy=skip", "--config.nan_max_skips=3")
    print(line)
    assert code == 3, err[-3000:]
    assert "3 skipped steps in a row, nan_max_skips=3" in line
    skips = [x[x.index("non-finite"):] for x in err.splitlines() if "update skipped" in x]
    print("\n".join(skips))
    assert len(skips) == 2 and "(1 in a row, 1 in all; nan_max_skips 3)" in skips[0]
    records = {r["step"]: r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"}
    skipped = sorted(s for s, r in records.items() if r["skipped"])
    assert len(skipped) == 3 and skipped[0] > 6, records
    skipped = skipped[:-1]  # the third stopped the run: no checkpoint of it
    experiment = loop.Experiment(tiny_config())
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    states = {s: ckpt.restore(experiment.abstract_state, s)[0] for s in (skipped[0] - 1, *skipped)}
    ckpt.close()
    assert checkpoints.saved_steps(os.path.join(workdir, "checkpoints"))[-1] == skipped[-1]
    last_good = jax.device_get(states[skipped[0] - 1])
    for step in skipped:
        state = jax.device_get(states[step])
        assert int(state.step) == step  # the data position moved on
        for part in STATE_PARTS:  # and nothing else changed
            jax.tree.map(np.testing.assert_array_equal, getattr(state, part), getattr(last_good, part))


# --- damaged checkpoints ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_newest_checkpoints_fall_back_to_the_previous_one(trained_run, tmp_path, caplog):
    workdir = str(trained_run.copy(tmp_path / "run"))
    directory = os.path.join(workdir, "checkpoints")
    for path in glob.glob(f"{directory}/6/state/**/d/*", recursive=True):  # truncated array files
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    for path in glob.glob(f"{directory}/4/state/**/d/*", recursive=True):  # deleted array files
        os.remove(path)
    states = {}
    summary = loop.train_and_evaluate(tiny_config(checkpoint_every_steps=2), workdir, mesh=one_device_mesh(),
                                      step_callback=keep_states(states))
    print("\n".join(messages(caplog)))
    assert summary["step"] == 6 and min(states) == 3  # resumed from step 2
    assert_states_equal(states[6], trained_run.state(6))
    assert sorted(os.listdir(os.path.join(directory, "damaged"))) == ["4", "6"]  # kept, out of the way
    assert checkpoints.saved_steps(directory) == [2, 4, 6]
    warnings = messages(caplog)
    assert any(f"checkpoint of step 6 ({directory}/6) does not restore" in m for m in warnings)
    assert any("using the older checkpoint of step 2" in m for m in warnings)


def test_garbled_metadata_falls_back_and_none_readable_is_an_error(tmp_path, caplog):
    directory = str(tmp_path / "ckpt")
    ckpt = checkpoints.Checkpointer(directory, keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, {"w": np.full((4,), float(step), np.float32)}, {"step": step, "data_position": step})
    ckpt.close()
    with open(f"{directory}/3/meta/metadata", "w") as f:
        f.write('{"step": 3, "data_po')
    os.remove(f"{directory}/2/meta/metadata")
    abstract = {"w": jax.ShapeDtypeStruct((4,), np.float32, sharding=sharding.replicated(sharding.make_mesh()))}
    ckpt = checkpoints.Checkpointer(directory)
    state, meta = ckpt.restore(abstract)
    assert meta["step"] == 1 and float(state["w"][0]) == 1.0
    print("\n".join(messages(caplog)))
    assert sorted(os.listdir(f"{directory}/damaged")) == ["2", "3"]
    for path in glob.glob(f"{directory}/1/state/**/d/*", recursive=True):
        os.remove(path)
    ckpt.close()
    ckpt = checkpoints.Checkpointer(directory)
    with pytest.raises(checkpoints.CheckpointError, match=f"step 1 at {directory}/1") as error:
        ckpt.restore(abstract)
    print(error.value)
    assert checkpoints.saved_steps(directory) == [1]  # nothing moved when nothing restores
    ckpt.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_during_an_async_save_leaves_the_previous_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    directory = workdir / "checkpoints"
    process = subprocess.Popen(main_command(f"--workdir={workdir}", "--config.num_train_steps=400",
                                            "--config.checkpoint_every_steps=1"),
                               cwd=ROOT, env=ONE_DEVICE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, in_flight = time.monotonic() + 240, []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            entries = os.listdir(directory) if directory.is_dir() else []
            in_flight = [e for e in entries if "tmp" in e]
            if in_flight and any(e.isdigit() for e in entries):  # a save under way, an older one finished
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005 if entries else 0.2)  # a save takes about a second here
    finally:
        process.kill()
        process.wait()
    assert in_flight, "never saw a save in progress"
    left = os.listdir(directory)
    print("killed during", in_flight, "left:", sorted(left))
    finished = checkpoints.saved_steps(str(directory))
    assert finished and all(e.isdigit() or "tmp" in e for e in left)
    config = tiny_config()
    ckpt = checkpoints.Checkpointer(str(directory))
    state, meta = ckpt.restore(loop.Experiment(config, one_device_mesh()).abstract_state)
    ckpt.close()
    assert meta["step"] == int(state.step) == max(finished)
    # Orbax removed the unfinished save when the checkpoints were opened again.
    assert sorted(os.listdir(directory)) == sorted(str(s) for s in finished)


# --- config on resume ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("model.name", "inception_resnet_v2"),
    ("model.depth_multiplier", 0.2),
    ("model.num_blocks", (2, 1, 1)),
    ("model.aux_logits", False),
    ("model.bn_scale", True),
    ("dataset.name", "fake"),
    ("optimizer", "momentum"),
    ("grad_clip_norm", 0.0),
    ("ema_decay", 0.0),
    ("weight_decay", 0.0),
])
def test_structural_config_change_on_resume_is_one_line(tmp_path, field, value):
    workdir = structure_only_run(tmp_path, tiny_config())
    config = tiny_config(**{field: value})
    with pytest.raises(config_lib.ConfigChangeError) as error:
        loop.check_resume_config(config, workdir)
    message = str(error.value)
    print(message)
    assert "\n" not in message and f"{field} " in message and " -> " in message
    assert "new --workdir" in message and "allow_config_change=True" in message


def test_safe_config_changes_are_allowed_and_listed(tmp_path):
    workdir = structure_only_run(tmp_path, tiny_config(checkpoint_every_steps=2))
    config = tiny_config(learning_rate=0.01, num_train_steps=100, image_size=99, fsdp=True, eval_every_steps=5,
                         grad_clip_norm=1.0, **{"model.residual_scales": (0.1, 0.1, 0.1), "model.dtype": "bfloat16"})
    with open(os.path.join(workdir, "config.json")) as f:
        structural, safe = config_lib.config_changes(json.load(f), config)
    assert structural == []
    assert [change.split()[0] for change in safe] == [
        "checkpoint_every_steps", "eval_every_steps", "fsdp", "grad_clip_norm", "image_size", "learning_rate",
        "model.dtype", "model.residual_scales", "num_train_steps"]
    loop.check_resume_config(config, workdir)  # logs them, raises nothing


@pytest.mark.parametrize("field,value", [("nan_policy", "ignore"), ("nan_max_skips", 0)])
def test_bad_fault_fields_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"config field {field} must be"):
        config_lib.validate(tiny_config(**{field: value}), device_count=8)


@pytest.mark.slow
@pytest.mark.subprocess
def test_config_change_through_main_and_evaluate(trained_run, tmp_path):
    workdir = str(trained_run.copy(tmp_path / "run"))
    for mode in ("train", "evaluate"):
        code, [line], err = run_main(f"--workdir={workdir}", f"--config.mode={mode}",
                                     "--config.model.name=inception_resnet_v2")
        print(line)
        assert code == 2 and "model.name 'inception_resnet_v1' -> 'inception_resnet_v2'" in line, err[-3000:]
    # The override: the checkpoints do not fit the other network, so nothing restores; nothing is moved either.
    code, [line], err = run_main(f"--workdir={workdir}", "--config.model.name=inception_resnet_v2",
                                 "--config.allow_config_change=True")
    print(line[:400])
    assert code == 4 and "no checkpoint in" in line and "Nothing was moved or deleted" in line, err[-3000:]
    assert all(f"step {s} at {workdir}/checkpoints/{s}" in line for s in (2, 4, 6))
    assert checkpoints.saved_steps(os.path.join(workdir, "checkpoints")) == [2, 4, 6]


# --- bad images ---------------------------------------------------------------------------------------------------


def image_folder(root, bad_files):
    for label in ("a", "b"):
        os.makedirs(root / label)
        for i in range(4):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(root / label / f"{i}.jpg")
    for name, content in bad_files.items():
        (root / name).write_bytes(content)
    return data.default_dataset_config().copy_and_resolve_references()


def test_a_non_image_file_is_named_or_skipped(tmp_path, caplog):
    c = image_folder(tmp_path, {"a/notes.jpg": b"this is not an image"})
    c.name, c.image_folder_dir, c.image_folder_eval_fraction = "image_folder", str(tmp_path), 0.0
    with pytest.raises(data.BadImageError, match=f"{tmp_path}/a/notes.jpg: not a JPEG") as error:
        data.get_info(c)
    print(error.value)
    c.skip_bad_images = True
    assert data.get_info(c).num_examples["train"] == 8
    print("\n".join(messages(caplog)))
    assert any("left out 1 file(s)" in m and "notes.jpg" in m for m in messages(caplog))


def test_a_corrupt_jpeg_stops_the_pipeline_naming_it(tmp_path):
    good = (tmp_path / "good.jpg")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(good)
    body = good.read_bytes()
    c = image_folder(tmp_path / "images", {"b/corrupt.jpg": body[:20] + b"\0" * 40})  # JPEG header, broken data
    c.name, c.image_folder_dir, c.image_folder_eval_fraction = "image_folder", str(tmp_path / "images"), 0.0
    batches = data.make_iterator(c, split="train", image_size=32, global_batch_size=9, train=False, seed=0)
    with pytest.raises(data.BadImageError, match="corrupt.jpg") as error:
        next(batches)
    print(error.value)
    assert "batch 0 holds 1 file(s) that do not decode" in str(error.value)
