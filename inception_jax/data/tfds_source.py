"""tensorflow-datasets data sets: ImageNet from its manual download, and any image-classification data set that
tensorflow-datasets has prepared locally, in either of its file formats.

Random access: array_record files are read through `tfds.data_source`; TFRecord files (tfds' default format) through
an index of record offsets built by scanning their headers once per process. We prepare new data sets as
array_record.
"""

from __future__ import annotations

import logging
import os
import struct

import ml_collections
import numpy as np
from tensorflow_datasets.core.decode import DeserializeMethod
from tensorflow_datasets.core.file_adapters import FileFormat

from inception_jax.data._tf import tf, tfds
from inception_jax.data.source import INCEPTION, SIMPLE, SIMPLE_MAX_SIDE, Source, make_info

IMAGENET = "imagenet2012"
IMAGENET_FILES = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
IMAGENET_DOWNLOAD = "https://image-net.org/download-images"
TFDS_IMAGENET_DOC = "https://www.tensorflow.org/datasets/catalog/imagenet2012"
PREPARED_FORMAT = "array_record"


def _builder(name: str, config: ml_collections.ConfigDict, **kwargs) -> tfds.core.DatasetBuilder:
    try:
        return tfds.builder(name, data_dir=config.data_dir or None, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"config field dataset.name = {name!r} is not a data set: use digits, fashion_mnist, image_folder, fake, "
            "imagenet2012 or a tensorflow-datasets name (https://www.tensorflow.org/datasets/catalog/overview)."
        ) from None


def is_prepared(name: str, config: ml_collections.ConfigDict) -> bool:
    """Whether tensorflow-datasets has `name` ready in the configured data_dir (no download is attempted)."""
    return _builder(name, config).is_prepared()


def manual_dir(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> str:
    return config.manual_dir or os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")


def missing_imagenet_files(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> list[str]:
    directory = manual_dir(config, builder)
    return [os.path.join(directory, f) for f in IMAGENET_FILES.values()
            if not os.path.isfile(os.path.join(directory, f))]


def _imagenet_error(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> FileNotFoundError:
    directory = manual_dir(config, builder)
    return FileNotFoundError(
        f"imagenet2012 is not prepared in {builder.data_dir_root} (config field dataset.data_dir), and ImageNet "
        f"cannot be downloaded automatically. Missing: {', '.join(missing_imagenet_files(config, builder))}.\n"
        f"Register at {IMAGENET_DOWNLOAD}, download ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar "
        f"(6.3 GB) and put both in {directory} (config field dataset.manual_dir; default <data_dir>/downloads/manual)."
        f" The first run then prepares the data set once (hours, about 150 GB more). See {TFDS_IMAGENET_DOC}."
    )


def prepare(name: str, config: ml_collections.ConfigDict) -> None:
    """Prepares `name` in the configured data_dir as array_record (ImageNet from the manual dir)."""
    builder = _builder(name, config, file_format=PREPARED_FORMAT)
    if builder.is_prepared():
        return
    if builder.name == IMAGENET and missing_imagenet_files(config, builder):
        raise _imagenet_error(config, builder)
    import jax

    if jax.process_count() > 1:
        raise RuntimeError(f"{name} is not prepared; prepare it once, on one host, before a multi-host run: "
                           f"python -m inception_jax.data.prepare --name={name} --data_dir=...")
    logging.warning("Preparing %s in %s (once; for ImageNet this takes hours).", name, builder.data_dir_root)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir(config, builder)))


class TfdsSource(Source):
    """An image-classification data set prepared by tensorflow-datasets; examples go to the graph serialized."""

    value_dtype = "string"
    value_shape = ()

    def __init__(self, name: str, config: ml_collections.ConfigDict):
        builder = _builder(name, config)
        if not builder.is_prepared():
            if builder.name == IMAGENET and missing_imagenet_files(config, builder):
                raise _imagenet_error(config, builder)
            if builder.name != IMAGENET and not config.download:
                raise FileNotFoundError(
                    f"tensorflow-datasets has not prepared {name!r} in {builder.data_dir_root} (config field "
                    f"dataset.data_dir). Prepare it once with `python -m inception_jax.data.prepare --name={name}` "
                    "(downloads it), or set dataset.download = True."
                )
            prepare(name, config)
            builder = _builder(name, config)
        self._builder = builder
        self._readers = {}
        features = builder.info.features
        self._image_key, self._label_key = builder.info.supervised_keys or ("image", "label")
        # FeaturesDict supports `in` but has no .get().
        image_feature = features[self._image_key] if self._image_key in features else None  # noqa: SIM401
        if not isinstance(image_feature, tfds.features.Image) or self._label_key not in features:
            raise ValueError(f"{name!r} is not an image-classification data set: it needs an Image feature "
                             f"{self._image_key!r} and a ClassLabel {self._label_key!r}")
        labels = features[self._label_key]
        shape = tuple(image_feature.shape)
        static = None if None in shape else shape
        self.info = make_info(
            config, name, labels.num_classes, {s: int(v.num_examples) for s, v in builder.info.splits.items()},
            class_names=tuple(labels.names), image_shape=static,
            preprocessing=SIMPLE if static and min(static[:2]) <= SIMPLE_MAX_SIDE else INCEPTION)
        spec = features.tf_example_spec
        self._parse_spec = {k: spec[k] for k in (self._image_key, self._label_key)}

    def num_examples(self, split: str) -> int:
        """Examples in `split`, which may use tfds' slicing syntax ("train[:90%]")."""
        try:
            return int(self._builder.info.splits[split].num_examples)
        except (KeyError, ValueError, AssertionError) as e:
            raise ValueError(f"{self.info.name!r} has no split {split!r} ({e}); it has "
                             f"{sorted(self.info.num_examples)}. Set config field dataset.train_split / "
                             "dataset.eval_split.") from None

    def _reader(self, split: str):
        if split not in self._readers:
            file_format = self._builder.info.file_format
            if file_format == FileFormat.ARRAY_RECORD:
                reader = self._builder.as_data_source(split, deserialize_method=DeserializeMethod.RAW_BYTES)
            elif file_format == FileFormat.TFRECORD:
                reader = TFRecordReader(self._builder.info.splits[split].file_instructions)
            else:
                raise ValueError(f"{self.info.name}: cannot read {file_format} files by index; prepare it as "
                                 f"{PREPARED_FORMAT}")
            self._readers[split] = reader
        return self._readers[split]

    def read(self, split: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        records = np.empty(len(indices), dtype=object)
        records[:] = self._reader(split).__getitems__([int(i) for i in indices])
        return records, np.full(len(indices), -1, np.int32)  # labels are parsed in the graph

    def decode_tf(self, value: tf.Tensor, label: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
        del label, image_size
        example = tf.io.parse_single_example(value, self._parse_spec)
        image = tf.io.decode_image(example[self._image_key], channels=3, expand_animations=False)
        return image, tf.cast(example[self._label_key], tf.int32)


_HEADER = struct.Struct("<QI")  # payload length, its masked CRC


def record_positions(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(payload offsets, payload lengths) of every record in a TFRecord file, reading only the headers."""
    offsets, lengths = [], []
    with open(path, "rb") as f:
        position = 0
        while header := f.read(_HEADER.size):
            (length, _) = _HEADER.unpack(header)
            offsets.append(position + _HEADER.size)
            lengths.append(length)
            position += _HEADER.size + length + 4  # + the payload's masked CRC
            f.seek(position)
    return np.array(offsets, np.int64), np.array(lengths, np.int64)


class TFRecordReader:
    """Random access by index into the records of a tfds split stored as local TFRecord shards."""

    def __init__(self, file_instructions):
        self._paths, files, offsets, lengths = [], [], [], []
        for instruction in file_instructions:
            o, n = record_positions(instruction.filename)
            if len(o) != instruction.examples_in_shard:
                raise ValueError(f"{instruction.filename}: {len(o)} records, tfds expected "
                                 f"{instruction.examples_in_shard}")
            take = slice(instruction.skip, instruction.skip + instruction.take)
            files.append(np.full(instruction.take, len(self._paths), np.int32))
            offsets.append(o[take])
            lengths.append(n[take])
            self._paths.append(instruction.filename)
        self._file, self._offset, self._length = (np.concatenate(a) for a in (files, offsets, lengths))

    def __len__(self) -> int:
        return len(self._offset)

    def __getitems__(self, indices: list[int]) -> list[bytes]:
        indices = np.asarray(indices, np.int64)
        out: list[bytes] = [b""] * len(indices)
        for file in np.unique(self._file[indices]):
            with open(self._paths[file], "rb") as f:
                for j in np.flatnonzero(self._file[indices] == file):
                    f.seek(self._offset[indices[j]])
                    out[j] = f.read(self._length[indices[j]])
        return out

