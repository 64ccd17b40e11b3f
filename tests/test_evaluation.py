"""Multi-crop and ensemble evaluation against slow reference loops; the table generator."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from inception_jax.evaluation import multicrop, tables


class Toy(nn.Module):
    """A small classifier with the networks' calling convention."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(7)(jnp.mean(x, axis=(1, 2)))


def toy_member(seed):
    model = Toy()
    return model, model.init(jax.random.key(seed), jnp.zeros((1, 9, 9, 3)))


def split_with_views(n, views, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, views, 9, 9, 3)).astype(np.float32), rng.integers(0, 7, n).astype(np.int32)


def batched(images, labels, batch):
    """Fixed-size batches; the last one padded and masked, as the data pipeline yields eval batches."""
    for start in range(0, len(images), batch):
        img, lab = images[start : start + batch], labels[start : start + batch]
        pad = batch - len(img)
        yield {
            "image": np.concatenate([img, np.zeros((pad, *img.shape[1:]), img.dtype)]),
            "label": np.concatenate([lab, np.zeros(pad, lab.dtype)]),
            "mask": np.concatenate([np.ones(len(img), np.float32), np.zeros(pad, np.float32)]),
        }


def slow_reference(members, images, labels):
    """One image and one crop at a time, in numpy."""
    top1 = top5 = 0
    for views, label in zip(images, labels, strict=True):
        probs = np.mean(
            [np.asarray(jax.nn.softmax(m.apply(v, view[None]))[0]) for m, v in members for view in views], axis=0
        )
        order = np.argsort(-probs)
        top1 += order[0] == label
        top5 += label in order[:5]
    n = len(labels)
    return 100 * (1 - top1 / n), 100 * (1 - top5 / n)


@pytest.mark.parametrize("views", [1, 12, 144])
def test_multicrop_matches_slow_loop_with_padding(views):
    members = [toy_member(0)]
    n = 11 if views < 144 else 5  # not a multiple of the batch: the last batch is padded and masked
    images, labels = split_with_views(n, views)
    result = multicrop.evaluate(members, batched(images, labels, 8))
    assert result["num_examples"] == n
    top1, top5 = slow_reference(members, images, labels)
    assert result["top1_error"] == pytest.approx(top1)
    assert result["top5_error"] == pytest.approx(top5)


def test_same_error_on_one_and_eight_devices():
    members = [toy_member(1)]
    images, labels = split_with_views(37, 12, seed=3)
    one = multicrop.evaluate(members, batched(images, labels, 8), mesh=Mesh(np.array(jax.devices()[:1]), ("data",)))
    eight = multicrop.evaluate(members, batched(images, labels, 8), mesh=Mesh(np.array(jax.devices()[:8]), ("data",)))
    assert len(jax.devices()) >= 8 and one == eight


def test_ensemble_of_identical_members_equals_single_and_averages_probabilities():
    images, labels = split_with_views(13, 2, seed=4)
    single = multicrop.evaluate([toy_member(0)], batched(images, labels, 8))
    assert multicrop.evaluate([toy_member(0), toy_member(0)], batched(images, labels, 8)) == single
    pair = [toy_member(0), toy_member(5)]
    top1, top5 = slow_reference(pair, images, labels)
    result = multicrop.evaluate(pair, batched(images, labels, 8))
    assert (result["top1_error"], result["top5_error"]) == pytest.approx((top1, top5))


def test_table_generator_puts_paper_ours_and_difference_in_each_cell(tmp_path):
    results = [
        {"model": "inception_v4", "crops": 1, "top1_error": 19.5, "top5_error": 5.25, "dataset": "imagenet2012",
         "split": "validation", "num_examples": 50000},
        {"model": "inception_resnet_v2", "crops": 144, "top1_error": 18.0, "top5_error": 3.5},
        {"members": ["inception_resnet_v2", "inception_v4", "inception_resnet_v2", "inception_resnet_v2"],
         "crops": 144, "top1_error": 17.0, "top5_error": 3.0},
    ]  # fmt: skip
    paths = []
    for i, result in enumerate(results):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(__import__("json").dumps(result))
    markdown = tables.render(tables.load_results(paths))
    assert "| Inception-v4 | 20.00 | 19.50 | -0.50 | 5.00 | 5.25 | +0.25 |" in markdown
    assert "| Inception-ResNet-v2 | 17.80 | 18.00 | +0.20 | 3.70 | 3.50 | -0.20 |" in markdown
    assert "| Inception-v3 | 21.20 | — | — | 5.60 | — | — |" in markdown
    assert (
        "| 1x inception_v4 + 3x inception_resnet_v2 | 144 | 16.50 | 17.00 | +0.50 | 3.10 | 3.00 | -0.10 |" in markdown
    )
    assert "imagenet2012 / validation, 50000 images" in markdown
    (tmp_path / "bad.json").write_text('{"crops": 1}')
    with pytest.raises(ValueError, match="not an evaluation result"):
        tables.load_results([tmp_path / "bad.json"])
