"""Input-pipeline throughput with the full Inception training preprocessing, beside the PIL pipelines of timm and
torchvision on the same JPEG files.

    python -m inception_jax.bench.loader [--num_images 256] [--image_size 299] [--seconds 8] [--rounds 3]
                                         [--loaders timm,torchvision,grain,tfdata] [--noise 3]

The JPEGs are made locally (ImageNet-like: 500x375 or 375x500, quality 90) from scikit-learn's two bundled photos,
cropped, flipped and lightly noised so that no two are alike.

Each loader runs in a fresh process of its own, pinned to one core; its figure is images per CPU-second of that
process (all its threads, so other load on the machine does not count), the median of `rounds` measurements after a
warm-up. Loaders:
- tfdata: ours, `make_iterator` over an image folder of the files (what training runs);
- grain: the same preprocessing graph called per image from a grain MapDataset (the alternative loader design);
- timm: `timm.data.create_transform(is_training=True)` with our crop scale/ratio, flip and colour ranges;
- torchvision: RandomResizedCrop + RandomHorizontalFlip + ColorJitter + ToTensor + Normalize.
timm and torchvision decode with PIL (`Image.open().convert("RGB")`, as their data sets do) and stack batches with
torch. Their ColorJitter scales brightness where TF-slim adds to it; the work per pixel is alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

LOADERS = ("timm", "torchvision", "grain", "tfdata")
SIZES = ((500, 375), (375, 500))  # (width, height); 3 of 4 are landscape, as in ImageNet


def make_jpegs(directory: str, num_images: int, noise: float = 3.0, seed: int = 0) -> list[str]:
    """Writes `num_images` distinct ImageNet-like JPEGs under directory/class_<k>/ and returns their paths.
    `noise`: standard deviation of added Gaussian noise, in grey levels (more noise, bigger files)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_images):
        width, height = SIZES[int(i % 4 == 3)]
        photo = photos[i % len(photos)]
        # A random window of the photo at 75-100% of the largest one with the target's aspect ratio.
        scale = rng.uniform(0.75, 1.0) * min(photo.width / width, photo.height / height)
        cw, ch = int(width * scale), int(height * scale)
        x, y = int(rng.integers(0, photo.width - cw + 1)), int(rng.integers(0, photo.height - ch + 1))
        image = photo.crop((x, y, x + cw, y + ch)).resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image, np.float32) + rng.normal(0, noise, (height, width, 3))
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        path = os.path.join(directory, f"class_{i % 4}", f"{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def _torch_batches(paths: list[str], transform, batch_size: int) -> Iterator[int]:
    import torch
    from PIL import Image

    i = 0
    while True:
        batch = []
        for _ in range(batch_size):
            with Image.open(paths[i % len(paths)]) as image:
                batch.append(transform(image.convert("RGB")))
            i += 1
        yield len(torch.stack(batch))


def timm_batches(paths: list[str], image_size: int, batch_size: int) -> Iterator[int]:
    from timm.data import create_transform

    transform = create_transform(image_size, is_training=True, scale=(0.05, 1.0), ratio=(0.75, 1.33), hflip=0.5,
                                 color_jitter=(32 / 255, 0.0, 0.5), interpolation="bilinear", mean=(0.5,) * 3,
                                 std=(0.5,) * 3)
    return _torch_batches(paths, transform, batch_size)


def torchvision_batches(paths: list[str], image_size: int, batch_size: int) -> Iterator[int]:
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.05, 1.0), ratio=(0.75, 1.33)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=32 / 255, saturation=0.5),
        T.ToTensor(),
        T.Normalize((0.5,) * 3, (0.5,) * 3),
    ])
    return _torch_batches(paths, transform, batch_size)


def grain_batches(paths: list[str], image_size: int, batch_size: int, threads: int) -> Iterator[int]:
    import grain

    from inception_jax.data._tf import tf
    from inception_jax.data.preprocessing import preprocess_tf

    # Parallelism comes from grain's threads; one op at a time per call, as tf.data runs its map functions. (Only
    # possible before TensorFlow's first op: the benchmark runs each loader in a fresh process.)
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)], autograph=False)
    def preprocess(data, seed):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return preprocess_tf(image, image_size, train=True, seed=seed)

    def load(index: int) -> np.ndarray:
        with open(paths[index % len(paths)], "rb") as f:
            return preprocess(f.read(), np.array([0, index], np.int64)).numpy()

    ds = grain.MapDataset.range(1 << 40).map(load).batch(batch_size, drop_remainder=True)
    for batch in ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2)):
        yield len(batch)


def tfdata_batches(directory: str, image_size: int, batch_size: int, threads: int) -> Iterator[int]:
    from inception_jax import data

    config = data.default_dataset_config()
    config.name = "image_folder"
    config.image_folder_dir = directory
    config.image_folder_eval_fraction = 0.0
    config.preprocessing = "inception"
    config.num_workers = threads
    for batch in data.make_iterator(config, split="train", image_size=image_size, global_batch_size=batch_size,
                                    train=True, seed=0, process_index=0, process_count=1):
        yield len(batch["image"])


def measure(batches: Iterator[int], seconds: float) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second) over at least `seconds` of wall time."""
    images, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        images += next(batches)
    return images / (time.process_time() - cpu), images / (time.perf_counter() - wall)


def measure_loader(name: str, directory: str, paths: list[str], image_size: int, batch_size: int, seconds: float,
                   rounds: int, threads: int) -> dict[str, float]:
    """Median images per CPU-second and per wall-second of one loader, after a warm-up."""
    makers: dict[str, Callable[[], Iterator[int]]] = {
        "timm": lambda: timm_batches(paths, image_size, batch_size),
        "torchvision": lambda: torchvision_batches(paths, image_size, batch_size),
        "grain": lambda: grain_batches(paths, image_size, batch_size, threads),
        "tfdata": lambda: tfdata_batches(directory, image_size, batch_size, threads),
    }
    batches = makers[name]()
    for _ in range(2):  # graph tracing, thread pools, file cache
        next(batches)
    samples = [measure(batches, seconds) for _ in range(rounds)]
    return {"per_cpu_second": statistics.median(s[0] for s in samples),
            "per_wall_second": statistics.median(s[1] for s in samples)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=299)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loaders", default=",".join(LOADERS))
    parser.add_argument("--noise", type=float, default=3.0, help="grey levels of noise in the JPEGs (file size)")
    parser.add_argument("--dir", default="", help="reuse/keep the JPEGs here (default: a temporary directory)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # measure one loader in this process
    return parser


def _worker(args: argparse.Namespace) -> None:
    # Pinned before any thread pool exists, so that every thread inherits it.
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    if args.worker in ("timm", "torchvision"):
        import torch

        torch.set_num_threads(1)
    paths = _jpegs(args.dir)[:args.num_images]
    print(json.dumps(measure_loader(args.worker, args.dir, paths, args.image_size, args.batch_size, args.seconds,
                                    args.rounds, threads=1)))


def _jpegs(directory: str) -> list[str]:
    return sorted(os.path.join(root, f) for root, _, files in os.walk(directory) for f in files if f.endswith(".jpg"))


def main(argv: list[str] | None = None) -> dict:
    """Runs every loader in a fresh process of its own (no loader's threads or caches affect another's figures)."""
    args = _parser().parse_args(argv)
    if args.worker:
        _worker(args)
        return {}
    loaders = [name for name in args.loaders.split(",") if name]
    if set(loaders) - set(LOADERS):
        _parser().error(f"unknown loaders {sorted(set(loaders) - set(LOADERS))}; choose from {LOADERS}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or tmp
        if len(_jpegs(directory)) < args.num_images:
            make_jpegs(directory, args.num_images, args.noise)
        paths = _jpegs(directory)[:args.num_images]
        mean_kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
        results = {}
        for name in loaders:
            command = [sys.executable, "-m", "inception_jax.bench.loader", "--worker", name, "--dir", directory,
                       *(f"--{k}={getattr(args, k)}" for k in ("num_images", "image_size", "batch_size", "seconds",
                                                                "rounds"))]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])

    print(f"{len(paths)} JPEGs (mean {mean_kb:.0f} KB), train preprocessing to {args.image_size}px, batch "
          f"{args.batch_size}, one core, median of {args.rounds} x {args.seconds:g} s")
    print(f"{'loader':<12} {'img/CPU-s':>10} {'img/s':>8}")
    for name, r in results.items():
        print(f"{name:<12} {r['per_cpu_second']:>10.1f} {r['per_wall_second']:>8.1f}")
    baselines = [results[n]["per_cpu_second"] for n in ("timm", "torchvision") if n in results]
    if "tfdata" in results and baselines:
        print(f"tfdata per core / best PIL per core: {results['tfdata']['per_cpu_second'] / max(baselines):.2f}x")
    summary = {"num_images": len(paths), "mean_kb": round(float(mean_kb), 1), "image_size": args.image_size,
               "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
