"""Where arrays live: one `data` mesh axis over every device of every host.

Batches are split along it. The training state is replicated, or with FSDP (ZeRO-3 style) each large parameter and
its optimiser and moving-average slots are split along their largest divisible dimension over the same axis; XLA
then gathers the weights for the forward pass and reduce-scatters the gradients.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"
# Smaller arrays stay replicated under FSDP: splitting them saves little memory and costs a collective each.
FSDP_MIN_SIZE = 2**14


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """`jax.distributed.initialize` when several processes take part: given explicitly, through the
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables, or by a cluster jax
    detects itself (SLURM, Open MPI, Cloud TPU; set INCEPTION_JAX_DISTRIBUTED=1). A single plain process does
    nothing. CPU processes talk through gloo."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = num_processes or int(env.get("JAX_NUM_PROCESSES", "0"))
    process_id = process_id if process_id >= 0 else int(env.get("JAX_PROCESS_ID", "-1"))
    if not coordinator_address and env.get("INCEPTION_JAX_DISTRIBUTED") != "1":
        return
    if coordinator_address and num_processes <= 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator_address:
        kwargs = {"coordinator_address": coordinator_address, "num_processes": num_processes,
                  "process_id": None if process_id < 0 else process_id}
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
    """Split the largest dimension that `num_shards` divides; replicate small or indivisible arrays."""
    if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % num_shards == 0:
            spec = [None] * len(shape)
            spec[dim] = DATA
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(mesh: Mesh, abstract_state: Any, fsdp: bool = False, min_size: int = FSDP_MIN_SIZE) -> Any:
    """Shardings for every leaf of the training state: replicated, or FSDP-split (see `fsdp_spec`)."""
    num_shards = mesh.shape[DATA]

    def leaf(x: Any) -> NamedSharding:
        shape = tuple(getattr(x, "shape", ()))
        return NamedSharding(mesh, fsdp_spec(shape, num_shards, min_size) if fsdp else PartitionSpec())

    return jax.tree.map(leaf, abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's share of a batch -> global arrays split over the mesh (each host holds its own rows)."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
