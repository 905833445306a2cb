"""MPerClassSampler and HierarchicalSampler: batch composition, epoch length, determinism, errors."""

import numpy as np
import pytest

from keras_roadmap.samplers import HierarchicalSampler, MPerClassSampler


def uneven_labels(rng, num_classes=40):
    # Class sizes 1..12, so some classes are smaller than samples_per_class.
    sizes = rng.integers(1, 13, size=num_classes)
    labels = np.repeat(np.arange(num_classes) * 7 + 3, sizes)  # non-contiguous raw ids
    return rng.permutation(labels)


def assert_class_blocks(labels, batch, classes, m):
    blocks = labels[batch].reshape(classes, m)
    assert (blocks == blocks[:, :1]).all(), "each block of m rows must share one class"
    assert len(np.unique(blocks[:, 0])) == classes, "classes within a batch must be distinct"
    return blocks[:, 0]


def test_m_per_class_composition_over_many_batches():
    rng = np.random.default_rng(0)
    labels = uneven_labels(rng)
    sampler = MPerClassSampler(labels, batch_size=32, samples_per_class=4, seed=1)
    batches = np.concatenate([sampler.batches(e) for e in range(13)])
    assert len(batches) >= 100 and batches.shape[1] == 32
    seen_classes = set()
    for batch in batches:
        seen_classes |= set(assert_class_blocks(labels, batch, 8, 4).tolist())
    assert seen_classes == set(np.unique(labels).tolist())
    # Classes with >= m images give m distinct images; smaller ones repeat (with replacement).
    counts = dict(zip(*np.unique(labels, return_counts=True), strict=False))
    for batch in batches[:50]:
        for block in batch.reshape(8, 4):
            if counts[labels[block[0]]] >= 4:
                assert len(set(block.tolist())) == 4


def test_m_per_class_epoch_length_and_image_coverage():
    labels = np.repeat(np.arange(50), 8)  # balanced: 400 images
    sampler = MPerClassSampler(labels, batch_size=40, samples_per_class=4, seed=0)
    assert len(sampler) == 10
    batches = sampler.batches(0)
    assert batches.shape == (10, 40) and batches.dtype == np.int64
    # Balanced classes: within one epoch no image repeats (per-class queues without replacement).
    assert len(np.unique(batches)) == 400


def test_m_per_class_is_deterministic_and_seed_dependent():
    labels = uneven_labels(np.random.default_rng(3))
    a = MPerClassSampler(labels, 16, 4, seed=7)
    b = MPerClassSampler(labels, 16, 4, seed=7)
    c = MPerClassSampler(labels, 16, 4, seed=8)
    np.testing.assert_array_equal(a.batches(2), b.batches(2))
    np.testing.assert_array_equal(next(iter(a)), a.batches(0)[0])
    assert not np.array_equal(a.batches(0), c.batches(0))
    assert not np.array_equal(a.batches(0), a.batches(1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=30, samples_per_class=4), r"batch_size \(30\) must be a multiple of samples_per_class \(4\)"),
        (dict(batch_size=48, samples_per_class=4), r"needs 12 distinct classes .* only 10"),
        (dict(batch_size=0, samples_per_class=4), r"`batch_size` must be an integer >= 1"),
    ],
)
def test_m_per_class_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MPerClassSampler(np.repeat(np.arange(10), 20), seed=0, **kwargs)


def test_m_per_class_rejects_bad_labels():
    with pytest.raises(ValueError, match="must hold integers"):
        MPerClassSampler(np.array([0.5, 1.5, 2.5, 3.5]), 4, 2)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        MPerClassSampler(np.zeros((4, 2), int), 4, 2)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        MPerClassSampler(np.arange(8), 16, 2)


def hierarchical_labels(rng):
    # 4 super-categories with 6, 5, 8 and 2 classes; class ids are globally unique.
    labels, supers, next_class = [], [], 0
    for s, n_classes in enumerate([6, 5, 8, 2]):
        for _ in range(n_classes):
            size = rng.integers(2, 9)
            labels += [next_class] * size
            supers += [s * 10] * size
            next_class += 1
    order = rng.permutation(len(labels))
    return np.array(labels)[order], np.array(supers)[order]


def test_hierarchical_super_pair_rule_over_many_batches():
    labels, supers = hierarchical_labels(np.random.default_rng(0))
    with pytest.warns(UserWarning, match=r"super-categories \[30\] have fewer than 4 classes"):
        sampler = HierarchicalSampler(
            labels, supers, batch_size=32, samples_per_class=4, batches_per_super_pair=5, seed=0
        )
    # Eligible supers 0, 10, 20 -> 3 pairs x 5 batches.
    assert len(sampler) == 15
    class_super = dict(zip(labels.tolist(), supers.tolist(), strict=False))
    batches = np.concatenate([sampler.batches(e) for e in range(8)])
    assert len(batches) >= 100
    for epoch in range(8):
        epoch_batches = sampler.batches(epoch)
        pairs_seen = []
        for b, batch in enumerate(epoch_batches):
            classes = assert_class_blocks(labels, batch, 8, 4)
            first = {class_super[c] for c in classes[:4]}
            second = {class_super[c] for c in classes[4:]}
            assert len(first) == 1 and len(second) == 1 and first != second
            pair = tuple(sorted(first | second))
            if b % 5:
                assert pair == pairs_seen[-1], "a pair's batches must be consecutive"
            else:
                pairs_seen.append(pair)
        assert sorted(pairs_seen) == [(0, 10), (0, 20), (10, 20)]


def test_hierarchical_shuffled_mode_and_determinism():
    labels, supers = hierarchical_labels(np.random.default_rng(1))
    kwargs = dict(batch_size=16, samples_per_class=2, batches_per_super_pair=10)
    with pytest.warns(UserWarning):
        a = HierarchicalSampler(labels, supers, seed=3, **kwargs)
        b = HierarchicalSampler(labels, supers, seed=3, **kwargs)
        c = HierarchicalSampler(labels, supers, seed=4, **kwargs)
        mixed = HierarchicalSampler(labels, supers, seed=3, consecutive=False, **kwargs)
    np.testing.assert_array_equal(a.batches(1), b.batches(1))
    assert not np.array_equal(a.batches(0), c.batches(0))
    # Same batches, other order: the shuffled mode only permutes rows.
    assert sorted(map(tuple, mixed.batches(0))) == sorted(map(tuple, a.batches(0)))
    assert not np.array_equal(mixed.batches(0), a.batches(0))


def test_hierarchical_errors():
    labels, supers = hierarchical_labels(np.random.default_rng(2))
    with pytest.raises(ValueError, match=r"= 3 classes must be even"):
        HierarchicalSampler(labels, supers, batch_size=12, samples_per_class=4)
    with pytest.raises(ValueError, match=r"at least two super-categories with >= 7 classes"), pytest.warns(UserWarning):
        HierarchicalSampler(labels, supers, batch_size=56, samples_per_class=4)
    bad_supers = supers.copy()
    bad_supers[np.flatnonzero(labels == 0)[0]] = 10
    with pytest.raises(ValueError, match=r"Class 0 appears under super-categories \[0, 10\]"):
        HierarchicalSampler(labels, bad_supers, batch_size=16, samples_per_class=4)
    with pytest.raises(ValueError, match=r"one entry per label"):
        HierarchicalSampler(labels, supers[:-1], batch_size=16, samples_per_class=4)
