"""The batch stream: determinism, resumption, per-host sharding, evaluation padding, and the pipeline running the
same preprocessing code as the public one-image functions."""

import itertools

import numpy as np
import pytest

from inception_jax import data
from inception_jax.data import pipeline

N_TRAIN, N_TEST, BATCH = 200, 75, 32


def fake_config(**overrides):
    """`fake` with label = index (num_classes > examples), so labels identify examples."""
    config = data.default_dataset_config()
    config.name = "fake"
    config.num_classes = 10**6
    config.num_examples = {"train": N_TRAIN, "test": N_TEST}
    config.fake_image_shape = (6, 6, 3)
    config.num_workers = 1
    for k, v in overrides.items():
        config[k] = v
    return config


def batches(config=None, n=3, **kwargs):
    kwargs = {"split": "train", "image_size": 8, "global_batch_size": BATCH, "train": True, "seed": 0,
              "process_index": 0, "process_count": 1, **kwargs}
    return list(itertools.islice(data.make_iterator(config or fake_config(), **kwargs), n))


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_batches_have_the_contracted_form():
    (batch,) = batches(n=1)
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (BATCH, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (BATCH,) and batch["label"].dtype == np.int32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0


def test_same_seed_same_batches_other_seed_other_batches():
    assert_same(batches(seed=3), batches(seed=3))
    other = batches(seed=4)
    assert not np.array_equal(other[0]["label"], batches(seed=3)[0]["label"])


@pytest.mark.parametrize("k", [1, 4, 7])  # 6 steps per epoch: within the first epoch, at and past its end
def test_resume_after_k_batches_continues_with_batch_k_plus_1(k):
    uninterrupted = batches(n=k + 2)
    assert_same(batches(n=2, start_step=k), uninterrupted[k:])


def test_epochs_visit_every_example_once_in_a_new_order():
    steps = pipeline.train_indices  # the plan, without images
    per_epoch = N_TRAIN // BATCH

    def epoch(e):
        return np.concatenate([steps(s, seed=0, num_examples=N_TRAIN, global_batch_size=BATCH, process_index=0,
                                     process_count=1)[0] for s in range(e * per_epoch, (e + 1) * per_epoch)])

    first, second = epoch(0), epoch(1)
    assert len(set(first)) == len(first) == per_epoch * BATCH
    assert not np.array_equal(first, second)


def test_block_shuffle_is_a_permutation_of_local_blocks():
    order = pipeline.epoch_permutation(0, 0, 1000, block=100)
    assert sorted(order) == list(range(1000))
    assert all(len(set(order[i:i + 100] // 100)) == 1 for i in range(0, 1000, 100))


def test_two_hosts_read_disjoint_shares_of_each_training_batch():
    hosts = [batches(n=6, process_index=i, process_count=2) for i in range(2)]
    for step in range(6):
        a, b = (h[step]["label"] for h in hosts)
        assert len(a) == len(b) == BATCH // 2
        assert not set(a) & set(b)
    # Together they make up the single-host batch, in host order.
    single = batches(n=2)
    np.testing.assert_array_equal(np.concatenate([hosts[0][1]["label"], hosts[1][1]["label"]]), single[1]["label"])
    np.testing.assert_array_equal(np.concatenate([hosts[0][1]["image"], hosts[1][1]["image"]]), single[1]["image"])
    # One epoch over both hosts: every example at most once, all but the remainder.
    seen = np.concatenate([h[s]["label"] for h in hosts for s in range(6)])
    assert len(set(seen)) == len(seen) == N_TRAIN - N_TRAIN % BATCH


def test_two_hosts_evaluate_disjoint_parts_whose_union_is_the_split():
    shares = []
    for host in range(2):
        it = data.make_iterator(fake_config(), split="test", image_size=8, global_batch_size=BATCH, train=False,
                                seed=0, process_index=host, process_count=2)
        got = list(it)
        assert len(got) == len(it) == -(-N_TEST // BATCH)  # every host runs the same number of steps
        for b in got:
            assert b["image"].shape == (BATCH // 2, 8, 8, 3) and b["mask"].dtype == np.float32
        shares.append(np.concatenate([b["label"][b["mask"] == 1] for b in got]))
    assert not set(shares[0]) & set(shares[1])
    assert sorted(np.concatenate(shares)) == list(range(N_TEST))


def test_eval_is_in_order_padded_and_unaugmented():
    got = batches(split="test", train=False, n=10)
    labels = np.concatenate([b["label"] for b in got])
    mask = np.concatenate([b["mask"] for b in got])
    assert len(got) == 3 and mask.sum() == N_TEST and np.all(mask[:N_TEST] == 1) and np.all(mask[N_TEST:] == 0)
    np.testing.assert_array_equal(labels[:N_TEST], np.arange(N_TEST))
    assert_same(got, batches(split="test", train=False, n=10, seed=5))


def test_unaugmented_training_batches_are_the_eval_images_in_training_order():
    """train=True, augment=False (BatchNorm recalibration's batches): the training stream's examples, each image
    as the evaluation preprocesses it."""
    augmented, plain = batches(n=2), batches(n=2, augment=False)
    evaluated = np.concatenate([b["image"] for b in batches(split="train", train=False, n=10)])
    for a, p in zip(augmented, plain, strict=True):
        np.testing.assert_array_equal(a["label"], p["label"])
        assert set(p) == {"image", "label"}
        np.testing.assert_array_equal(p["image"], evaluated[p["label"]])  # label = index in the split
        assert not np.array_equal(a["image"], p["image"])


def test_pipeline_runs_the_public_preprocessing():
    """Batch s, slot j of a seed-s0 stream == preprocess_train(image, seed=(s0, s * global_batch + j))."""
    from inception_jax.data.datasets import digits_splits

    config = data.default_dataset_config()  # digits, simple preprocessing
    config.random_flip = False
    info = data.get_info(config)
    got = batches(config, n=2, image_size=16, seed=11)
    perm = pipeline.epoch_permutation(11, 0, info.num_examples["train"])
    images = digits_splits()["train"][0]
    for step in range(2):
        for j in (0, BATCH - 1):
            index = perm[step * BATCH + j]
            expected = data.preprocess_train(images[index], 16, seed=(11, step * BATCH + j), mode="simple",
                                             random_flip=False)
            np.testing.assert_array_equal(got[step]["image"][j], expected)


def test_num_crops_views_in_evaluation():
    config = fake_config(fake_image_shape=(40, 50, 3), preprocessing="inception")
    (batch,) = batches(config, split="test", train=False, n=1, image_size=16, global_batch_size=4, num_crops=12)
    assert batch["image"].shape == (4, 12, 16, 16, 3)
    with pytest.raises(ValueError, match="num_crops"):
        batches(config, num_crops=12)  # not in training


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="multiple"):
        batches(global_batch_size=33, process_count=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        batches(global_batch_size=256)
    with pytest.raises(ValueError, match="no split"):
        batches(split="validation")
