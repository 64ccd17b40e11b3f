"""TensorFlow and tensorflow-datasets, imported once, quietly, and kept off the accelerators.

Every module of `inception_jax.data` that needs TensorFlow imports it from here, so the import-order rules below hold
for all of them.
"""

import contextlib
import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Triton (pulled in by torch/torchvision/timm) segfaults while loading its LLVM if TensorFlow's is already loaded;
# the other order works. Loading it first costs ~0.1 s and keeps a process that also runs timm (parity tests, the
# benchmark's PIL baseline) alive.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

import tensorflow as tf  # noqa: E402

# TensorFlow only feeds the host: it must not reserve accelerator memory that JAX needs.
# RuntimeError: someone initialised TensorFlow's devices before us; nothing left to change then.
with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")

import tensorflow_datasets as tfds  # noqa: E402

__all__ = ["tf", "tfds"]
