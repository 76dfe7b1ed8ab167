"""pretrain.data: the seeded 8:2 split, per-epoch batches, rank shares and the held-out part."""

from __future__ import annotations

import random

import pytest

from flair_riva.pretrain.data import epoch_batches, heldout_split, rank_slice, stratified_split


def test_stratified_split_is_seeded_disjoint_and_8_to_2():
    labels = [0] * 60 + [1] * 40
    train, dev, test = stratified_split(labels, seed=3)
    assert stratified_split(labels, seed=3) == (train, dev, test)
    assert stratified_split(labels, seed=4) != (train, dev, test)
    assert sorted(train + dev + test) == list(range(100))
    assert len(test) == 20 and sum(labels[i] for i in test) == 8          # 20% of each class
    assert len(dev) == 8 and sum(labels[i] for i in dev) == 3             # 10% of each class's remainder
    # tiny classes still get one pair in each part
    train, dev, test = stratified_split([0, 0, 0, 1, 1, 1, 1], seed=0)
    for part in (train, dev, test):
        assert {0, 1} <= {[0, 0, 0, 1, 1, 1, 1][i] for i in part}


def test_epoch_batches_and_rank_slices():
    a = epoch_batches(37, 8, seed=1, epoch=2, stream="pseudo")
    assert a == epoch_batches(37, 8, seed=1, epoch=2, stream="pseudo")
    assert a != epoch_batches(37, 8, seed=1, epoch=3, stream="pseudo")
    assert a != epoch_batches(37, 8, seed=1, epoch=2, stream="labelled")
    assert [len(b) for b in a] == [8, 8, 8, 8, 5]
    assert sorted(i for b in a for i in b) == list(range(37))
    for world_size in (1, 2, 3):
        for batch in a:
            shares = [rank_slice(batch, r, world_size) for r in range(world_size)]
            assert [i for s in shares for i in s] == batch
    assert rank_slice([7], 1, 2) == []
    train, held = heldout_split(100, 0.05, seed=1)
    assert len(held) == 5 and not set(train) & set(held) and heldout_split(100, 0.05, seed=1) == (train, held)


def test_length_bucketed_batches_cover_every_pair_once_and_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(3, 40) for _ in range(1000)]
    plain = epoch_batches(1000, 16, seed=1, epoch=2, stream="pseudo")
    assert epoch_batches(1000, 16, seed=1, epoch=2, stream="pseudo", lengths=lengths, pool=0) == plain
    bucketed = epoch_batches(1000, 16, seed=1, epoch=2, stream="pseudo", lengths=lengths, pool=10)
    assert bucketed == epoch_batches(1000, 16, seed=1, epoch=2, stream="pseudo", lengths=lengths, pool=10)
    assert bucketed != epoch_batches(1000, 16, seed=1, epoch=3, stream="pseudo", lengths=lengths, pool=10)
    assert sorted(i for b in bucketed for i in b) == list(range(1000))
    assert sorted(len(b) for b in bucketed) == [8] + [16] * 62     # 1000 = 6 pools of 160 + 40: one short batch

    def padded_steps(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded_steps(bucketed) < 0.8 * padded_steps(plain), "a pool of sorted lengths pads far less"
    # each batch comes from one pool of 10 plain batches, and a pool's batches are consecutive runs of its
    # pairs sorted by length (no overlap of length ranges); the batches are shuffled across pools
    pool_of = {i: k // 10 for k, b in enumerate(plain) for i in b}
    by_pool: dict[int, list[list[int]]] = {}
    for b in bucketed:
        assert len({pool_of[i] for i in b}) == 1
        by_pool.setdefault(pool_of[b[0]], []).append(sorted(lengths[i] for i in b))
    for runs in by_pool.values():
        runs.sort()
        assert all(a[-1] <= b[0] for a, b in zip(runs, runs[1:]))
    maxima = [max(lengths[i] for i in b) for b in bucketed]
    assert maxima != sorted(maxima)
    with pytest.raises(ValueError, match="3 lengths for 1000 pairs"):
        epoch_batches(1000, 16, seed=1, epoch=2, stream="pseudo", lengths=[1, 2, 3], pool=10)

