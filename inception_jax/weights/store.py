"""Pretrained variables on disk: an orbax checkpoint of the variables beside a JSON file naming the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from inception_jax import models

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def save(directory: str | Path, model_name: str, model_config: dict[str, Any], variables: dict) -> Path:
    """Writes `variables` and the `models.create(model_name, **model_config)` recipe under `directory`."""
    directory = Path(directory).absolute()
    if (directory / VARIABLES_DIR).exists():
        raise FileExistsError(f"{directory / VARIABLES_DIR} exists; choose another --out or remove it first")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / VARIABLES_DIR, variables)
    (directory / MODEL_FILE).write_text(json.dumps({"name": model_name, "config": model_config}, indent=2) + "\n")
    return directory


def load(directory: str | Path) -> tuple[models.InceptionNet, dict]:
    """Reads what `save` wrote: returns (model, variables)."""
    directory = Path(directory).absolute()
    if not (directory / MODEL_FILE).exists():
        raise FileNotFoundError(f"{directory} holds no {MODEL_FILE}: not a directory written by inception_jax.weights")
    spec = json.loads((directory / MODEL_FILE).read_text())
    model = models.create(spec["name"], **spec["config"])
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(directory / VARIABLES_DIR)
    return model, jax.tree.map(jax.numpy.asarray, variables)
