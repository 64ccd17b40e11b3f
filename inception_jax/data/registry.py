"""Data sets by name (`config.dataset.name`): `open_source`, `get_info` and the preprocessing "auto" means.

- `digits`, `image_folder`, `fake`: `datasets`;
- `fashion_mnist`: the IDX files in `fashion_mnist_dir`, or tensorflow-datasets' copy when those are absent;
- anything else: a tensorflow-datasets name (`tfds_source`, imported only then).
"""

from __future__ import annotations

import ml_collections

from inception_jax.data.datasets import (
    FASHION_MNIST_CLASSES,
    IDX_FILES,
    FakeSource,
    ImageFolderSource,
    idx_files,
    open_digits,
    open_idx,
)
from inception_jax.data.source import INCEPTION, SIMPLE, DatasetInfo, Source, check_splits


def _open_fashion_mnist(config: ml_collections.ConfigDict) -> Source:
    files = idx_files(config.fashion_mnist_dir)
    if files is not None:
        return open_idx(config, "fashion_mnist", files, FASHION_MNIST_CLASSES)
    from inception_jax.data import tfds_source

    if tfds_source.is_prepared("fashion_mnist", config):
        return tfds_source.TfdsSource("fashion_mnist", config)
    stems = [s + ".gz" for stems in IDX_FILES.values() for s in stems]
    raise FileNotFoundError(
        f"fashion_mnist: the IDX files {', '.join(stems)} are not in {config.fashion_mnist_dir!r} (config field "
        "dataset.fashion_mnist_dir; Debian/Ubuntu: `apt-get install dataset-fashion-mnist` puts them in "
        "/usr/share/datasets/fashion-mnist), and tensorflow-datasets has not prepared fashion_mnist in "
        f"{config.data_dir or 'its default data_dir'!r} (config field dataset.data_dir)."
    )


_OPENERS = {
    "digits": open_digits,
    "fashion_mnist": _open_fashion_mnist,
    "image_folder": ImageFolderSource,
    "fake": FakeSource,
}


def open_source(config: ml_collections.ConfigDict) -> Source:
    """The source named by `config.name`; fails with a clear error, before reading any data, when it is missing."""
    if not config.name:
        raise ValueError("config field dataset.name is empty")
    opener = _OPENERS.get(config.name)
    if opener is None:
        from inception_jax.data import tfds_source

        return check_splits(tfds_source.TfdsSource(config.name, config))
    return check_splits(opener(config))


def get_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Name, classes, split sizes and split names of the configured data set, without reading its examples."""
    return open_source(config).info


def resolve_preprocessing(config: ml_collections.ConfigDict, info: DatasetInfo) -> str:
    """The preprocessing mode the config asks for, with "auto" resolved for this data set."""
    mode = config.preprocessing
    if mode == "auto":
        return info.preprocessing
    if mode not in (INCEPTION, SIMPLE):
        raise ValueError(f"config field dataset.preprocessing must be inception, simple or auto; got {mode!r}")
    return mode
