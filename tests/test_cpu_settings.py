"""The CPU process settings (inception_jax.cpu_settings): taken by the command-line entry points on the CPU, once,
with the user's own settings winning; never by importing the package. Every subprocess here starts Python and at
most a tiny jax program: no network is compiled."""

import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from inception_jax import cpu_settings

ROOT = Path(__file__).resolve().parents[1]
GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
SETTINGS = ("XLA_FLAGS", "GLIBC_TUNABLES", cpu_settings._APPLIED)
LINE = "inception_jax: CPU backend: set "
OURS = ":".join(cpu_settings.MALLOC_TUNABLES)
YNN_FLAG = next(iter(cpu_settings.XLA_CPU_FLAGS))


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the settings under test (conftest set XLA_FLAGS), on the CPU."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and k != "JAX_PLATFORMS"}
    return env | {"JAX_PLATFORMS": "cpu"} | overrides


def huge_pages() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return GLIBC and "[never]" not in f.read()
    except OSError:
        return False


_IMPORTS = """
import json, os, sys
print("start", flush=True)  # twice if the process re-executed itself
import jax, flax, optax, orbax.checkpoint, ml_collections  # jax sets a variable of its own (TPU_SKIP_MDS_QUERY)
before = dict(os.environ)
import inception_jax, inception_jax.models, inception_jax.training, inception_jax.bench
import inception_jax.main, inception_jax.bench.__main__  # the entry points' modules, imported rather than run
print(json.dumps({"changed": sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)),
                  "XLA_FLAGS": os.environ.get("XLA_FLAGS"), "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES")}))
"""


@pytest.mark.subprocess
def test_importing_the_package_changes_nothing_in_the_process():
    out = subprocess.run([sys.executable, "-c", _IMPORTS], cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines.count("start") == 1, out.stdout  # never re-executed
    assert json.loads(lines[-1]) == {"changed": [], "XLA_FLAGS": None, "GLIBC_TUNABLES": None}, out.stdout
    assert LINE not in out.stderr


# Records the environment of every interpreter start (site imports sitecustomize first thing, after an exec too).
_SITECUSTOMIZE = """
import json, os
with open(os.environ["STARTS_FILE"], "a") as f:
    f.write(json.dumps({k: os.environ.get(k) for k in ("XLA_FLAGS", "GLIBC_TUNABLES")}) + "\\n")
"""


def run_entry_point(tmp_path: Path, entry: str, *extra: str, **env: str) -> tuple[subprocess.CompletedProcess, list]:
    """`python -m ENTRY` with a cheap command line (no network compiled): (the process, the environment of each of
    its interpreter starts)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    starts = tmp_path / "starts.jsonl"
    starts.unlink(missing_ok=True)
    if entry == "inception_jax.bench":
        saved = tmp_path / "bench.jsonl"
        row = dict(impl="ours", model="inception_v4", mode="infer", batch=8, image_size=299, dtype="float32",
                   images_per_s=8.0, step_ms=1000.0)  # fmt: skip
        saved.write_text(json.dumps(row) + "\n")
        argv = ["--report", str(saved)]
    else:
        argv = ["--helpfull"]  # absl prints every flag and exits 1, before anything is built
    environ = clean_env(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
                        STARTS_FILE=str(starts), **env)  # fmt: skip
    out = subprocess.run([sys.executable, "-m", entry, *argv, *extra], cwd=ROOT, env=environ, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == (0 if entry == "inception_jax.bench" else 1), out.stderr[-2000:]
    assert ("| ours | inception_v4 |" if entry == "inception_jax.bench" else "--config") in out.stdout
    return out, [json.loads(line) for line in starts.read_text().splitlines()]


@pytest.mark.subprocess
@pytest.mark.parametrize("entry", ["inception_jax.bench", "inception_jax.main"])
def test_entry_point_on_the_cpu_says_so_once_and_restarts_with_the_tunables(tmp_path, entry):
    out, starts = run_entry_point(tmp_path, entry)
    said = [line for line in out.stderr.splitlines() if line.startswith(LINE)]
    assert len(said) == 1, out.stderr
    assert f"XLA_FLAGS='{cpu_settings.xla_flags('')}'" in said[0] and cpu_settings.OFF_FLAG in said[0]
    if huge_pages():
        assert len(starts) == 2, starts  # one restart, with our tunables
        assert starts[1] == {"XLA_FLAGS": cpu_settings.xla_flags(""), "GLIBC_TUNABLES": OURS}
        assert f"GLIBC_TUNABLES='{OURS}'" in said[0]
    else:  # no glibc or no transparent huge pages: the XLA flags only, no restart
        assert len(starts) == 1 and "GLIBC_TUNABLES" not in said[0]


@pytest.mark.subprocess
@pytest.mark.parametrize("entry", ["inception_jax.bench", "inception_jax.main"])
def test_nocpu_settings_leaves_the_process_as_it_is(tmp_path, entry):
    out, starts = run_entry_point(tmp_path, entry, cpu_settings.OFF_FLAG)
    assert LINE not in out.stderr
    assert starts == [{"XLA_FLAGS": None, "GLIBC_TUNABLES": None}]


@pytest.mark.subprocess
def test_child_of_an_entry_point_stays_silent(tmp_path):
    # What a benchmark worker inherits from the process that applied (and announced) the settings.
    inherited = {"XLA_FLAGS": cpu_settings.xla_flags(""), "GLIBC_TUNABLES": OURS, cpu_settings._APPLIED: "logged"}
    out, starts = run_entry_point(tmp_path, "inception_jax.bench", **inherited)
    assert LINE not in out.stderr
    assert starts == [{"XLA_FLAGS": inherited["XLA_FLAGS"], "GLIBC_TUNABLES": OURS}]


@pytest.mark.subprocess
@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_users_own_settings_win(tmp_path):
    mine = {
        "XLA_FLAGS": f"{YNN_FLAG}=none --xla_force_host_platform_device_count=2",
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=4",
    }
    out, starts = run_entry_point(tmp_path, "inception_jax.bench", **mine)
    assert starts[-1]["XLA_FLAGS"] == mine["XLA_FLAGS"]
    tunables = starts[-1]["GLIBC_TUNABLES"].split(":")
    assert tunables[0] == "glibc.malloc.arena_max=4" and "glibc.malloc.arena_max=1" not in tunables
    if huge_pages():
        assert sorted(tunables[1:]) == sorted(t for t in cpu_settings.MALLOC_TUNABLES if "arena_max" not in t)


def test_xla_flags_add_only_what_the_user_did_not_set():
    ours = " ".join(f"{k}={v}" for k, v in cpu_settings.XLA_CPU_FLAGS.items())
    assert cpu_settings.xla_flags("") == ours
    devices = "--xla_force_host_platform_device_count=8"
    assert cpu_settings.xla_flags(devices) == f"{devices} {ours}"
    assert cpu_settings.xla_flags(f"{YNN_FLAG}=none") == f"{YNN_FLAG}=none"


def test_malloc_tunables_add_only_what_the_user_did_not_set():
    assert cpu_settings.malloc_tunables("") == OURS
    assert cpu_settings.malloc_tunables(OURS) is None
    mixed = cpu_settings.malloc_tunables("glibc.pthread.rseq=0:glibc.malloc.arena_max=4")
    parts = mixed.split(":")
    assert parts[:2] == ["glibc.pthread.rseq=0", "glibc.malloc.arena_max=4"]
    assert sorted(parts[2:]) == sorted(t for t in cpu_settings.MALLOC_TUNABLES if "arena_max" not in t)


@pytest.mark.parametrize(
    "platforms, on_cpu", [("cpu", True), ("cuda", False), ("cuda,cpu", False), ("cpu,cuda", True), (" cpu ", True),
                          ("tpu", False)],
)  # fmt: skip
def test_runs_on_cpu_follows_jax_platforms(monkeypatch, platforms, on_cpu):
    # JAX_PLATFORMS decides, whatever plugins are installed.
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: ["a GPU plugin"])
    assert cpu_settings.runs_on_cpu({"JAX_PLATFORMS": platforms}) is on_cpu


@pytest.mark.parametrize(
    "plugins, libtpu, on_cpu", [([], False, True), (["jax_cuda12_plugin"], False, False), ([], True, False)]
)
def test_runs_on_cpu_without_jax_platforms_looks_for_plugins(monkeypatch, plugins, libtpu, on_cpu):
    find_spec = importlib.util.find_spec
    asked = []

    def entry_points(**kwargs):
        asked.append(kwargs)
        return list(plugins)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    spec = object() if libtpu else None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "libtpu" else find_spec(name, *a))
    assert cpu_settings.runs_on_cpu({"JAX_PLATFORMS": ""}) is on_cpu
    assert cpu_settings.runs_on_cpu({}) is on_cpu
    assert all(kw == {"group": "jax_plugins"} for kw in asked)


_CONV_GRADIENT_PROGRAM = """
import jax
import jax.numpy as jnp
from jax import lax

x, w = jnp.ones((2, 9, 9, 32)), jnp.ones((3, 3, 32, 64))  # 4 -> 8 channels stayed out of YNNPACK anyway
loss = lambda w: jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = jax.jit(jax.grad(loss)).lower(w).compile().as_text()
print("YNN", hlo.count("__ynn_fusion"))
"""


def test_the_xla_flags_keep_convolutions_out_of_ynnpack():
    """XLA's own convolutions measured faster than YNNPACK's (docs/performance.md), so the flags send only
    reductions there."""

    def ynn_fusions(xla_flags: str) -> str:
        out = subprocess.run([sys.executable, "-c", _CONV_GRADIENT_PROGRAM], env=clean_env(XLA_FLAGS=xla_flags),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()[-1]

    assert ynn_fusions(cpu_settings.xla_flags("")) == "0"
    if ynn_fusions("") == "0":
        pytest.skip("this XLA no longer sends convolutions to YNNPACK by default; nothing to tell apart")
