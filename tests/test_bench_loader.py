"""The input-pipeline benchmark runs (tiny settings; the figures themselves are in the README)."""

import os

import pytest
from PIL import Image

from inception_jax.bench import loader as bench


def test_bench_jpegs_and_loaders(tmp_path):
    paths = bench.make_jpegs(str(tmp_path), 8)
    assert len(paths) == len(set(paths)) == 8
    sizes = {Image.open(p).size for p in paths}
    assert sizes == {(500, 375), (375, 500)}
    assert all(os.path.getsize(p) > 20_000 for p in paths)  # real photographic content, not flat colour
    loaders = ["tfdata"] + [name for name in ("grain", "timm", "torchvision") if _importable(name)]
    for name in loaders:
        result = bench.measure_loader(name, str(tmp_path), paths, image_size=64, batch_size=4, seconds=0.1,
                                      rounds=1, threads=1)
        assert result["per_cpu_second"] > 0 and result["per_wall_second"] > 0, name


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def test_bench_refuses_unknown_loaders():
    with pytest.raises(SystemExit):
        bench.main(["--loaders", "dali"])
