"""inception_jax: Inception-v3, Inception-v4, Inception-ResNet-v1 and -v2 in JAX/Flax.

Importing the package changes nothing in the process. The command-line entry points apply the CPU process settings
of `inception_jax.cpu_settings` when they run on the CPU.
"""

__version__ = "0.1.0"
