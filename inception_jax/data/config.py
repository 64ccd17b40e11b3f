"""The `dataset` section of an experiment config: every field the data loaders read, with its default."""

import ml_collections


def default_dataset_config() -> ml_collections.ConfigDict:
    """Defaults for `config.dataset`; set `name` and whatever else the experiment needs."""
    c = ml_collections.ConfigDict()
    # digits | fashion_mnist | image_folder | fake | imagenet2012 | any tensorflow-datasets name prepared locally.
    c.name = "digits"
    # tensorflow-datasets root; "" = tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    c.data_dir = ""
    # Where the ILSVRC2012 tar files are put by hand; "" = <data_dir>/downloads/manual.
    c.manual_dir = ""
    # Let tensorflow-datasets download and prepare a missing data set (needs the network). ImageNet is prepared from
    # the manual dir whatever this says.
    c.download = False
    # The four gzipped IDX files of Fashion-MNIST (Debian: `apt-get install dataset-fashion-mnist`).
    c.fashion_mnist_dir = "/usr/share/datasets/fashion-mnist"
    # Either <dir>/<class>/<image> or <dir>/<split>/<class>/<image>.
    c.image_folder_dir = ""
    # Files of image_folder whose first bytes are not a JPEG, PNG, GIF or BMP header: False = stop with an error
    # naming them, True = leave them out of the data set and say how many in the log. (A file with a valid header
    # that fails to decode stops the run with its name either way.)
    c.skip_bad_images = False
    # Share of each class held out as the "test" split when image_folder_dir has no split directories.
    c.image_folder_eval_fraction = 0.1
    # "" = "train"; eval "" = "validation" when the data set has one, else "test". tfds slicing works: "train[:90%]".
    c.train_split = ""
    c.eval_split = ""
    # inception (TF-slim) | simple (tiny images: translate, resize) | auto (simple for data sets of small fixed size).
    c.preprocessing = "auto"
    # Horizontal flips in training; turn off for digits and other data where a mirror image is another class.
    c.random_flip = True
    # fake only: classes, examples per split, and image shape (0 = the image size the model asks for).
    c.num_classes = 1000
    c.num_examples = ml_collections.ConfigDict({"train": 10_000, "test": 1_000})
    c.fake_image_shape = (0, 0, 3)
    # 0 = a full permutation of the training split every epoch. K > 0 = blocks of K consecutive records visited in
    # random order and shuffled inside, for storage where scattered reads are slow.
    c.shuffle_buffer = 0
    # Batches kept ready ahead of the training step.
    c.prefetch = 2
    # Threads that decode and augment; 0 = tf.data's autotuning over all cores.
    c.num_workers = 0
    return c
