"""pretrain.data: the seeded 8:2 split, per-epoch batches, rank shares and the held-out part."""

from __future__ import annotations

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
