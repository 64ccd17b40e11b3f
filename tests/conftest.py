"""Test set-up: 8 CPU devices for sharding tests, the entry points' CPU XLA flags, a compilation cache that every
worker and every run shares, the two tiers, and one trained workdir for the tests that need a run.

Tiers: `python -m pytest` runs the fast tier (every test not marked `slow`); `-m slow` runs the rest and `--all`
runs both. Any other `-m` expression is the user's own selection.
"""

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# One persistent cache for every pytest worker, every subprocess a test starts, and later runs: jax writes each
# entry atomically under a key of the program, the flags and the jax version, so sharing it is safe.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import one_device_mesh, tiny_config  # noqa: E402

from inception_jax import cpu_settings  # noqa: E402

# The XLA flags the entry points set on the CPU, so that tests compile what users run (before jax starts); on a GPU
# or TPU host nothing (the flags are the CPU backend's).
if cpu_settings.runs_on_cpu():
    os.environ["XLA_FLAGS"] = cpu_settings.xla_flags(os.environ["XLA_FLAGS"])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all", action="store_true", default=False, help="run both tiers: the fast and the slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without `-m` or `--all`, leave out the slow tier (it is deselected, and the summary says how many)."""
    if config.getoption("--all") or config.getoption("-m"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def missing_parity_dependency(message: str) -> None:
    """Skips, or fails where CI asks for every parity test (INCEPTION_JAX_REQUIRE_PARITY=1)."""
    if os.environ.get("INCEPTION_JAX_REQUIRE_PARITY") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def timm_and_torch():
    """(timm, torch), or a skip when the [parity] extra is missing; CI sets INCEPTION_JAX_REQUIRE_PARITY=1 so that
    a missing extra fails instead of silently skipping the parity tests."""
    try:
        import timm
        import torch
    except ImportError as error:
        missing_parity_dependency(f"timm/PyTorch not importable ({error}); install them: pip install -e '.[parity]'")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return timm, torch


@pytest.fixture(scope="session")
def keras_module():
    """Keras 3 (TensorFlow's dependency) on the backend KERAS_BACKEND names, TensorFlow by default: an
    implementation independent of XLA and of ours."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError as error:
        missing_parity_dependency(f"Keras not importable ({error}); it comes with tensorflow: pip install -e .")
    return keras


@dataclass(frozen=True)
class TrainedRun:
    """A finished run of tests/tiny_config.py: `TRAINED_STEPS` steps on one device in train_and_evaluate mode,
    checkpoints at 2, 4 and 6, an evaluation at the end. Shared by every test of the session: copy it before
    writing to it."""

    workdir: Path
    config_overrides: dict

    def copy(self, destination: Path) -> Path:
        shutil.copytree(self.workdir, destination)
        return destination

    def config(self, **overrides):
        """The run's config (mode train_and_evaluate), with dotted-key overrides."""
        return tiny_config(**(self.config_overrides | overrides))

    def final_eval(self) -> dict:
        """The run's evaluation at its last step, as metrics.jsonl holds it."""
        records = [json.loads(line) for line in (self.workdir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if r["split"] == "eval"][-1]

    def state(self, step: int = 6):
        """The train state saved at `step`, on the host (orbax restores the saved arrays exactly)."""
        import jax

        from inception_jax.training import checkpoints, loop

        experiment = loop.Experiment(self.config(), one_device_mesh())
        checkpointer = checkpoints.Checkpointer(str(self.workdir / "checkpoints"))
        try:
            state, meta = checkpointer.restore(experiment.abstract_state, step, move_damaged=False)
        finally:
            checkpointer.close()
        assert meta["step"] == step
        return jax.device_get(state)


TRAINED_STEPS = 6
TRAINED_RUN_CONFIG = {"mode": "train_and_evaluate", "checkpoint_every_steps": 2}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """The one trained workdir of the session, made once for all pytest workers: the first worker that asks
    trains it under a file lock, the others wait and read it."""
    from inception_jax.training import loop

    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base is a directory of the session's own; alone, the base is the session's.
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    workdir = shared / "trained_run"
    with open(shared / "trained_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (workdir / "summary.json").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            summary = loop.train_and_evaluate(tiny_config(**TRAINED_RUN_CONFIG), str(workdir), mesh=one_device_mesh())
            assert summary["step"] == TRAINED_STEPS and "eval_top1" in summary
    return TrainedRun(workdir, dict(TRAINED_RUN_CONFIG))
