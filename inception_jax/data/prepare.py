"""Prepare a tensorflow-datasets data set once, as array_record, before training on it (on one host).

    python -m inception_jax.data.prepare --name=imagenet2012 [--data_dir=DIR] [--manual_dir=DIR]

ImageNet is built from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in the manual dir (hours, ~150 GB);
other names are downloaded (network needed).
"""

import argparse

from inception_jax.data.config import default_dataset_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="a tensorflow-datasets name, e.g. imagenet2012")
    parser.add_argument("--data_dir", default="", help="tfds root (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--manual_dir", default="", help="ImageNet's tar files (default: <data_dir>/downloads/manual)")
    args = parser.parse_args(argv)
    config = default_dataset_config()
    config.name, config.data_dir, config.manual_dir = args.name, args.data_dir, args.manual_dir

    from inception_jax.data import tfds_source

    tfds_source.prepare(args.name, config)
    print(tfds_source.TfdsSource(args.name, config).info)


if __name__ == "__main__":
    main()
