"""Data sets by name: the offline ones, the user's image folder, tensorflow-datasets (both file formats), and the
errors for missing data. Nothing here touches the network."""

import gzip
import io
import os
import socket
import tarfile

import numpy as np
import pytest
from PIL import Image

from inception_jax import data
from inception_jax.data import datasets, registry
from inception_jax.data._tf import tf, tfds

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the data code tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def config(**fields):
    c = data.default_dataset_config()
    for k, v in fields.items():
        c[k] = v
    return c


def take(c, n=1, **kwargs):
    kwargs = {"split": "train", "image_size": 16, "global_batch_size": 8, "train": True, "seed": 0,
              "process_index": 0, "process_count": 1, **kwargs}
    it = data.make_iterator(c, **kwargs)
    return [next(it) for _ in range(n)]


def test_digits_needs_no_network_and_no_files(no_network):
    info = data.get_info(config())
    assert info.name == "digits" and info.num_classes == 10
    assert dict(info.num_examples) == {"train": 1437, "test": 360}
    assert (info.train_split, info.eval_split, info.preprocessing) == ("train", "test", "simple")
    (batch,) = take(config(), image_size=75, global_batch_size=64)
    assert batch["image"].shape == (64, 75, 75, 3) and set(batch["label"]) <= set(range(10))
    test = list(data.make_iterator(config(), split="test", image_size=75, global_batch_size=128, train=False, seed=0,
                                   process_index=0, process_count=1))
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in test])
    assert len(labels) == 360 and np.all(np.bincount(labels) > 25)  # every digit in the test split


def test_digits_split_is_fixed():
    train, test = datasets.digits_splits()["train"], datasets.digits_splits()["test"]
    assert train[0].shape == (1437, 8, 8, 1) and train[0].dtype == np.uint8 and train[0].max() == 255
    # A fingerprint of the split: changing it would silently change every digits result.
    assert test[1][:10].tolist() == [2, 2, 3, 0, 8, 8, 7, 8, 3, 4] and int(train[1].sum()) == 6408


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_are_read(tmp_path, no_network):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        arrays[prefix] = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", arrays[prefix][0])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", arrays[prefix][1])
    c = config(name="fashion_mnist", fashion_mnist_dir=str(tmp_path))
    info = data.get_info(c)
    assert dict(info.num_examples) == {"train": 12, "test": 5} and info.image_shape == (28, 28, 1)
    assert info.class_names[9] == "Ankle boot"
    batches = list(data.make_iterator(c, split="test", image_size=28, global_batch_size=8, train=False, seed=0,
                                      process_index=0, process_count=1))
    np.testing.assert_array_equal(batches[0]["label"][:5], arrays["t10k"][1])
    # Simple eval at the native size: the grey level itself, in [-1, 1] and on all three channels.
    np.testing.assert_allclose(batches[0]["image"][0, ..., 1], arrays["t10k"][0][0] / 127.5 - 1, atol=1e-5)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package(no_network):
    info = data.get_info(config(name="fashion_mnist"))
    assert dict(info.num_examples) == {"train": 60_000, "test": 10_000} and info.num_classes == 10
    (batch,) = take(config(name="fashion_mnist"), split="test", train=False)
    np.testing.assert_array_equal(batch["label"], [9, 2, 1, 1, 6, 1, 4, 6])  # the first test labels


def test_fake_data_of_any_shape():
    c = config(name="fake", fake_image_shape=(30, 20, 1), num_classes=7)
    info = data.get_info(c)
    assert info.num_classes == 7 and info.image_shape == (30, 20, 1)
    (batch,) = take(c, image_size=24)
    assert batch["image"].shape == (8, 24, 24, 3) and batch["label"].max() < 7
    # Channels are equal (grey) and the pixels vary.
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])
    assert batch["image"].std() > 0.3


def _save(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def test_image_folder_with_class_directories(tmp_path, no_network):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "emu"):
        for i in range(10):
            shape = (30 + i, 40, 3) if i % 3 else (35, 25)  # some grayscale, sizes vary
            _save(str(tmp_path / name / f"{i}.{'png' if i % 2 else 'jpg'}"), rng.integers(0, 256, shape, np.uint8))
    c = config(name="image_folder", image_folder_dir=str(tmp_path), image_folder_eval_fraction=0.3,
               preprocessing="inception")
    info = data.get_info(c)
    assert info.class_names == ("cat", "dog", "emu") and info.num_classes == 3
    assert sum(info.num_examples.values()) == 30 and 0 < info.num_examples["test"] < 20
    assert data.get_info(c) == info  # the split is a function of the paths

    # Evaluation output == preprocess_eval of the decoded file, with its label.
    source = registry.open_source(c)
    (batch,) = list(data.make_iterator(c, split="test", image_size=32, global_batch_size=32, train=False, seed=0,
                                       process_index=0, process_count=1))
    for j in range(info.num_examples["test"]):
        path, label = (a[0] for a in source.read("test", np.array([j])))
        pixels = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy()
        np.testing.assert_array_equal(batch["image"][j], data.preprocess_eval(pixels, 32))
        assert batch["label"][j] == label == ["cat", "dog", "emu"].index(os.path.basename(os.path.dirname(path)))
    (train,) = take(c)
    assert train["image"].shape == (8, 16, 16, 3)


def test_image_folder_with_split_directories(tmp_path):
    pixels = np.zeros((20, 20, 3), np.uint8)
    for split, n in (("train", 4), ("val", 2)):
        for name in ("a", "b"):
            for i in range(n):
                _save(str(tmp_path / split / name / f"{i}.png"), pixels)
    info = data.get_info(config(name="image_folder", image_folder_dir=str(tmp_path)))
    assert dict(info.num_examples) == {"train": 8, "val": 4} and info.eval_split == "val"


class InceptionJaxTiny(tfds.core.GeneratorBasedBuilder):
    """A 3-class tfds data set whose image i is filled with grey level 10 * i: its pixels name it."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=["x", "y", "z"]),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 20), "test": self._generate_examples(20, 5)}

    def _generate_examples(self, start, n):
        for i in range(start, start + n):
            yield i, {"image": np.full((10 + i, 12, 3), 10 * i, np.uint8), "label": i % 3}


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_tfds_prepared_locally(tmp_path, file_format, no_network):
    tfds.builder("inception_jax_tiny", data_dir=str(tmp_path), file_format=file_format).download_and_prepare()
    c = config(name="inception_jax_tiny", data_dir=str(tmp_path), preprocessing="simple")
    info = data.get_info(c)
    assert dict(info.num_examples) == {"train": 20, "test": 5} and info.class_names == ("x", "y", "z")
    assert info.preprocessing == "inception"  # image sizes vary

    # Evaluation reads the split in tfds' own order; the grey level tells which example each one is.
    builder = tfds.builder("inception_jax_tiny", data_dir=str(tmp_path))

    def names(split):  # tfds' own order of the split
        examples = (builder.as_data_source(split) if file_format == "array_record"
                    else tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
        return [int(e["image"][0, 0, 0]) // 10 for e in examples]

    def named(images):  # the grey level of the centre pixel names the example
        return np.round((images[:, 8, 8, 0] + 1) * 127.5 / 10).astype(int)

    reference = names("test")
    (batch,) = list(data.make_iterator(c, split="test", image_size=16, global_batch_size=8, train=False, seed=0,
                                       process_index=0, process_count=1))
    np.testing.assert_array_equal(named(batch["image"][:5]), reference)
    np.testing.assert_array_equal(batch["label"][:5], np.array(reference) % 3)
    # Slicing syntax works for splits.
    assert registry.open_source(c).num_examples("train[:50%]") == 10
    (train,) = take(c, split="train[:50%]")
    assert set(named(train["image"])) <= set(names("train[:50%]"))
    np.testing.assert_array_equal(train["label"], named(train["image"]) % 3)


def test_unknown_name_names_the_field(no_network):
    with pytest.raises(ValueError, match="dataset.name"):
        data.get_info(config(name="no_such_data_set_anywhere"))


def test_missing_imagenet_says_which_files_go_where(tmp_path, no_network):
    manual = tmp_path / "manual"
    with pytest.raises(FileNotFoundError) as error:
        data.get_info(config(name="imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)))
    message = str(error.value)
    for expected in (str(manual / "ILSVRC2012_img_train.tar"), str(manual / "ILSVRC2012_img_val.tar"),
                     "dataset.manual_dir", "https://www.tensorflow.org/datasets/catalog/imagenet2012",
                     "https://image-net.org/download-images"):
        assert expected in message


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            member = tarfile.TarInfo(name)
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))


def _jpeg(grey: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), grey, np.uint8)).save(out, "JPEG", quality=95)
    return out.getvalue()


def test_imagenet_is_prepared_from_the_manual_dir(tmp_path, no_network):
    """The ILSVRC tar layout in miniature: synset tars inside the train tar, flat validation images."""
    manual = tmp_path / "manual"
    manual.mkdir()
    synsets = ["n01440764", "n01443537", "n01484850"]  # labels 0, 1, 2
    for k, synset in enumerate(synsets):
        _tar(tmp_path / f"{synset}.tar", {f"{synset}_{i}.JPEG": _jpeg(80 * k) for i in range(2)})
    _tar(manual / "ILSVRC2012_img_train.tar", {f"{s}.tar": (tmp_path / f"{s}.tar").read_bytes() for s in synsets})
    _tar(manual / "ILSVRC2012_img_val.tar", {f"ILSVRC2012_val_{i:08d}.JPEG": _jpeg(60 * i) for i in range(1, 4)})
    c = config(name="imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    info = data.get_info(c)  # prepares it
    assert dict(info.num_examples) == {"train": 6, "validation": 3} and info.num_classes == 1000
    assert (info.train_split, info.eval_split, info.preprocessing) == ("train", "validation", "inception")
    (train,) = take(c, global_batch_size=6, image_size=16)
    assert sorted(train["label"]) == [0, 0, 1, 1, 2, 2]
    (train,) = list(data.make_iterator(c, split="train", image_size=16, global_batch_size=6, train=False, seed=0,
                                       process_index=0, process_count=1))
    grey = np.round((train["image"].mean(axis=(1, 2, 3)) + 1) * 127.5)
    np.testing.assert_allclose(grey, 80 * train["label"], atol=4)  # each image carries its synset's label
    (val,) = list(data.make_iterator(c, split="validation", image_size=16, global_batch_size=4, train=False, seed=0,
                                     process_index=0, process_count=1))
    # Validation image i has grey level 60 i and ILSVRC2012's i-th validation label: n01751748, n09193705,
    # n02105855, which are classes 65, 970, 230.
    image_number = np.round((val["image"][:3].mean(axis=(1, 2, 3)) + 1) * 127.5 / 60).astype(int)
    np.testing.assert_array_equal(val["label"][:3], np.array([0, 65, 970, 230])[image_number])
    np.testing.assert_array_equal(val["mask"], [1, 1, 1, 0])


def test_unprepared_tfds_data_set_is_not_downloaded(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="inception_jax.data.prepare"):
        data.get_info(config(name="cifar10", data_dir=str(tmp_path)))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.get_info(config(name="fashion_mnist", fashion_mnist_dir=str(tmp_path), data_dir=str(tmp_path)))


def test_missing_image_folder_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.image_folder_dir"):
        data.get_info(config(name="image_folder", image_folder_dir=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="no images"):
        data.get_info(config(name="image_folder", image_folder_dir=str(tmp_path)))


def test_unknown_split_names_the_field():
    with pytest.raises(ValueError, match="dataset.train_split"):
        data.get_info(config(train_split="training"))
