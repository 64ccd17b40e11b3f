"""The package's shape: imports point one way (no module reaches itself again through its imports, late imports
inside functions included), and the public API holds no helper of the tests or the experiment scripts."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, env_with_devices

PACKAGE = ROOT / "inception_jax"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (top level or inside a function). `from a
    import b` counts as importing a.b when that is a module, else a."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    child = f"{target}.{alias.name}"
                    if child in modules:
                        edges.add(child)
                    elif target in modules:
                        edges.add(target)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "inception_jax.data.registry" in graph["inception_jax.data.pipeline"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_late_import_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_helper_of_tests_or_scripts_in_the_public_api():
    from inception_jax import weights

    assert not hasattr(weights, "random_timm_model")
    assert not (PACKAGE / "launch.py").exists()


def test_config_model_defaults_are_the_networks():
    """Every network field a config holds defaults to the network's own default (one place states it), except the
    aux head, which the paper's recipe trains with."""
    from inception_jax import models
    from inception_jax.training import default_config

    config = default_config().model
    for field in ("dropout_rate", "depth_multiplier", "min_depth", "bn_momentum", "bn_epsilon", "bn_scale", "remat",
                  "ops"):  # fmt: skip
        assert config[field] == getattr(models.InceptionNet, field), field
    assert models.DTYPES[config.dtype] == models.InceptionNet.dtype
    assert config.aux_logits is True and models.InceptionNet.aux_logits is False


@pytest.mark.slow
@pytest.mark.subprocess
def test_an_installed_package_trains_without_config_from_another_directory(tmp_path):
    """`pip install .` (not editable) into a directory of its own, then `python -m inception_jax.main` with no
    --config, run from elsewhere: the default config ships inside the package."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(ROOT)], check=True, capture_output=True)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(env_with_devices(1), PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import inception_jax; print(inception_jax.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the installed copy, not this checkout
    workdir = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "inception_jax.main", f"--workdir={workdir}",
                          "--config.num_train_steps=2", "--config.bn_recalibration_batches=1"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 2 and summary["total_steps"] == 2 and "eval_top1" in summary
    assert json.loads((workdir / "config.json").read_text())["dataset"]["name"] == "digits"  # the quickstart's
