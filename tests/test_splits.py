"""Tests for diffusion_bias.data.splits: disjoint, covering, seeded, audited."""

import numpy as np
import pytest

from diffusion_bias.data import splits as splits_lib


def _contents(items, indices):
    return [tuple(np.asarray(items[i]).ravel().tolist()) for i in indices]


def _brute_overlap(items, splits):
    """Overlap by Python sets of row tuples: (cross_split, split_heldout, pair)."""
    groups = [_contents(items, g) for g in list(splits.train) + [splits.heldout]]
    sets = [set(g) for g in groups]
    k = len(groups) - 1
    pair = np.zeros((k + 1, k + 1), dtype=np.int64)
    for g in range(k + 1):
        for h in range(k + 1):
            if g != h:
                pair[g, h] = sum(c in sets[h] for c in groups[g])
    cross = sum(any(c in sets[h] for h in range(k) if h != g) for g in range(k) for c in groups[g])
    in_splits = set().union(*sets[:k])
    heldout = sum(c in in_splits for c in groups[k])
    return cross, heldout, pair


def _brute_walk(items, sizes, seed):
    """The item-by-item walk that drop_overlap describes, in plain Python."""
    perm = np.random.default_rng(seed).permutation(len(items))
    owner, groups, g = {}, [[] for _ in sizes], 0
    for i in perm:
        while g < len(sizes) and len(groups[g]) == sizes[g]:
            g += 1
        if g == len(sizes):
            break
        c = tuple(np.asarray(items[i]).ravel().tolist())
        if owner.setdefault(c, g) == g:
            groups[g].append(int(i))
    return groups


def _assert_disjoint_by_index(splits):
    groups = list(splits.train) + [splits.heldout]
    everything = np.concatenate(groups)
    assert len(np.unique(everything)) == len(everything)


def test_splits_are_disjoint_covering_and_positional_in_the_permutation():
    k, n, m, seed = 5, 37, 23, 3
    splits = splits_lib.split_indices(1000, k, n, m, seed)
    assert splits.train.shape == (k, n) and splits.heldout.shape == (m,)
    assert splits.train.dtype == np.int64 and splits.heldout.dtype == np.int64
    assert (splits.num_splits, splits.split_size) == (k, n)
    _assert_disjoint_by_index(splits)
    assert len(np.unique(np.concatenate([splits.train.ravel(), splits.heldout]))) == k * n + m
    perm = np.random.default_rng(seed).permutation(1000)
    for i in range(k):
        np.testing.assert_array_equal(splits.train[i], perm[i * n : (i + 1) * n])
    np.testing.assert_array_equal(splits.heldout, perm[k * n : k * n + m])


def test_splits_may_use_the_whole_pool_and_an_empty_heldout():
    splits = splits_lib.split_indices(12, 3, 4, 0, 0)
    assert splits.heldout.shape == (0,)
    np.testing.assert_array_equal(np.sort(splits.train.ravel()), np.arange(12))


def test_same_seed_gives_identical_splits_and_another_seed_different_ones():
    a = splits_lib.split_indices(500, 3, 50, 20, 7)
    b = splits_lib.split_indices(500, 3, 50, 20, 7)
    c = splits_lib.split_indices(500, 3, 50, 20, 8)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.heldout, b.heldout)
    assert not np.array_equal(a.train, c.train)


def test_splits_indices_are_read_only():
    splits = splits_lib.split_indices(100, 2, 10, 5, 0)
    with pytest.raises(ValueError):
        splits.train[0, 0] = 1


@pytest.mark.parametrize(
    "name, value",
    [
        ("pool_size", 0),
        ("pool_size", -5),
        ("pool_size", 100.0),
        ("pool_size", True),
        ("num_splits", 0),
        ("num_splits", -1),
        ("num_splits", 2.0),
        ("num_splits", True),
        ("split_size", 0),
        ("split_size", -3),
        ("split_size", 10.5),
        ("split_size", True),
        ("heldout_size", -1),
        ("heldout_size", 5.0),
        ("heldout_size", False),
        ("seed", -1),
        ("seed", 0.0),
        ("seed", True),
        ("seed", None),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(name, value):
    args = dict(pool_size=100, num_splits=2, split_size=10, heldout_size=5, seed=0)
    args[name] = value
    with pytest.raises(ValueError, match=name):
        splits_lib.split_indices(**args)


def test_numpy_integers_are_accepted():
    splits = splits_lib.split_indices(
        np.int64(100), np.int32(2), np.uint8(10), np.int64(0), np.int64(1)
    )
    assert splits.train.shape == (2, 10)


def test_splits_too_big_for_the_pool_raise_with_the_numbers():
    with pytest.raises(
        ValueError,
        match=r"num_splits \* split_size \+ heldout_size = 2100 "
        r"exceeds pool_size = 1797",
    ):
        splits_lib.split_indices(1797, 2, 1000, 100, 0)
    with pytest.raises(ValueError, match="pool_size"):
        splits_lib.make_splits(np.zeros((10, 2)), 2, 5, 1, 0, drop_overlap=True)


def test_content_ids_are_equal_exactly_for_equal_items():
    rng = np.random.default_rng(0)
    for items in [
        rng.integers(0, 2, size=(300, 3, 2)),  # int64, multi-axis items
        rng.integers(0, 3, size=(300, 4)).astype(np.uint8),
        rng.integers(0, 2, size=(300, 5)).astype(np.float32) - 0.5,
        rng.integers(0, 2, size=(300, 5)).astype(bool),
    ]:
        ids = splits_lib.content_ids(items)
        assert ids.shape == (300,) and ids.dtype == np.int64
        rows = _contents(items, range(300))
        first = {}
        for i, r in enumerate(rows):
            first.setdefault(r, ids[i])
            assert first[r] == ids[i]
        assert len(set(ids.tolist())) == len(first)
        assert ids.min() == 0 and ids.max() == len(first) - 1


def test_content_ids_compare_floats_by_value():
    items = np.array([[0.0, 1.0], [-0.0, 1.0], [np.nan, 1.0], [-np.nan, 1.0], [1.0, 1.0]])
    ids = splits_lib.content_ids(items)
    assert ids[0] == ids[1] and ids[2] == ids[3]
    assert len(set(ids.tolist())) == 3


def _planted_pool():
    """A pool of distinct rows with duplicates planted at known split positions."""
    k, n, m, seed = 3, 10, 6, 1
    items = np.arange(60 * 4).reshape(60, 4)  # all rows distinct
    splits = splits_lib.split_indices(60, k, n, m, seed)
    tr, ho = splits.train, splits.heldout
    items[tr[1, 0]] = items[tr[0, 0]]  # shared by split 0 and split 1
    items[ho[0]] = items[tr[2, 3]]  # shared by split 2 and held-out
    items[ho[1]] = items[tr[2, 3]]  # ... twice in held-out
    items[tr[1, 5]] = items[tr[1, 6]]  # repeated inside split 1 only: not overlap
    items[tr[0, 7]] = items[tr[0, 8]] = items[tr[0, 9]]  # inside split 0 only
    return items, splits, (k, n, m, seed)


def test_content_overlap_agrees_with_brute_force_sets_on_planted_duplicates():
    items, splits, _ = _planted_pool()
    overlap = splits_lib.content_overlap(items, splits)
    cross, heldout, pair = _brute_overlap(items, splits)
    assert (overlap.cross_split, overlap.split_heldout) == (cross, heldout)
    np.testing.assert_array_equal(overlap.pair_counts, pair)
    # What was planted: one item each in splits 0 and 1; two held-out items match
    # one item of split 2; the repeats inside splits 0 and 1 count for nothing.
    assert (overlap.cross_split, overlap.split_heldout) == (2, 2)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 1] = expected[1, 0] = 1
    expected[2, 3], expected[3, 2] = 1, 2
    np.testing.assert_array_equal(overlap.pair_counts, expected)
    assert not overlap.clean
    assert "2 split items" in overlap.summary() and "held-out" in overlap.summary()


def test_content_overlap_ignores_repeats_inside_one_group():
    items = np.arange(40).reshape(20, 2)
    splits = splits_lib.split_indices(20, 2, 6, 4, 0)
    items[splits.train[0, :3]] = items[splits.train[0, 4]]
    items[splits.heldout[:2]] = items[splits.heldout[3]]
    overlap = splits_lib.content_overlap(items, splits)
    assert overlap.clean and overlap.cross_split == 0 and overlap.split_heldout == 0
    assert overlap.summary() == "content overlap: clean (2 splits + held-out)"


def test_content_overlap_rejects_indices_outside_the_pool():
    splits = splits_lib.split_indices(20, 2, 5, 2, 0)
    with pytest.raises(ValueError, match="outside the pool"):
        splits_lib.content_overlap(np.zeros((10, 2)), splits)


def test_make_splits_without_drop_overlap_is_split_indices_plus_its_report():
    items, splits, (k, n, m, seed) = _planted_pool()
    made, overlap = splits_lib.make_splits(items, k, n, m, seed)
    np.testing.assert_array_equal(made.train, splits.train)
    np.testing.assert_array_equal(made.heldout, splits.heldout)
    assert (overlap.cross_split, overlap.split_heldout) == (2, 2)


def test_drop_overlap_is_clean_by_brute_force_and_follows_the_described_walk():
    items, _, (k, n, m, seed) = _planted_pool()
    splits, overlap = splits_lib.make_splits(items, k, n, m, seed, drop_overlap=True)
    assert splits.train.shape == (k, n) and splits.heldout.shape == (m,)
    assert overlap.clean
    cross, heldout, pair = _brute_overlap(items, splits)
    assert cross == heldout == 0 and not pair.any()
    _assert_disjoint_by_index(splits)
    walk = _brute_walk(items, [n] * k + [m], seed)
    np.testing.assert_array_equal(splits.train, np.array(walk[:k]))
    np.testing.assert_array_equal(splits.heldout, np.array(walk[k]))


def test_drop_overlap_keeps_repeats_inside_a_split():
    items, _, (k, n, m, seed) = _planted_pool()
    splits, _ = splits_lib.make_splits(items, k, n, m, seed, drop_overlap=True)
    # Split 0 is filled first, so its three planted repeats all stay in it.
    split0 = _contents(items, splits.train[0])
    assert len(set(split0)) == n - 2


def test_drop_overlap_on_a_duplicate_free_pool_is_the_positional_split():
    items = np.arange(300).reshape(100, 3)
    plain, _ = splits_lib.make_splits(items, 4, 20, 10, 5)
    dropped, overlap = splits_lib.make_splits(items, 4, 20, 10, 5, drop_overlap=True)
    np.testing.assert_array_equal(plain.train, dropped.train)
    np.testing.assert_array_equal(plain.heldout, dropped.heldout)
    assert overlap.clean


def test_drop_overlap_is_deterministic():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 2, size=(400, 6))  # 64 contents: heavy duplication
    a, _ = splits_lib.make_splits(items, 3, 10, 5, 11, drop_overlap=True)
    b, _ = splits_lib.make_splits(items, 3, 10, 5, 11, drop_overlap=True)
    c, _ = splits_lib.make_splits(items, 3, 10, 5, 12, drop_overlap=True)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.heldout, b.heldout)
    assert not np.array_equal(a.train, c.train)
    walk = _brute_walk(items, [10] * 3 + [5], 11)
    np.testing.assert_array_equal(a.train, np.array(walk[:3]))
    np.testing.assert_array_equal(a.heldout, np.array(walk[3]))


def test_drop_overlap_raises_when_the_pool_runs_out_of_distinct_content():
    items = np.tile(np.array([[0, 0], [0, 1], [1, 1]]), (20, 1))  # 3 contents, 60 items
    # Four groups need four distinct contents; which group runs dry depends on how
    # many contents the earlier groups claimed along the walk.
    with pytest.raises(
        ValueError,
        match="ran out of distinct content while filling (split [1-3]|the held-out pool)",
    ):
        splits_lib.make_splits(items, 3, 1, 1, 0, drop_overlap=True)
    with pytest.raises(ValueError, match="ran out of distinct content"):
        splits_lib.make_splits(items, 4, 5, 0, 0, drop_overlap=True)
    # Three groups of one item each always fit: each claims one content.
    splits, overlap = splits_lib.make_splits(items, 2, 1, 1, 0, drop_overlap=True)
    assert overlap.clean
    assert len(set(_contents(items, np.concatenate([splits.train.ravel(), splits.heldout])))) == 3


def test_a_realistic_pool_with_repeats_overlaps_and_drop_overlap_cleans_it():
    # 20,000 sequences of 12 tokens over 3 symbols (531,441 contents): ~4% of the
    # items repeat another item's content, as in a sampled grammar pool.
    items = np.random.default_rng(0).integers(0, 3, size=(20_000, 12)).astype(np.int8)
    k, n, m = 4, 4000, 2000
    plain, overlap = splits_lib.make_splits(items, k, n, m, seed=0)
    assert not overlap.clean and overlap.cross_split > 0 and overlap.split_heldout > 0
    cross, heldout, pair = _brute_overlap(items, plain)
    assert (overlap.cross_split, overlap.split_heldout) == (cross, heldout)
    np.testing.assert_array_equal(overlap.pair_counts, pair)
    dropped, clean = splits_lib.make_splits(items, k, n, m, seed=0, drop_overlap=True)
    assert clean.clean and dropped.train.shape == (k, n) and dropped.heldout.shape == (m,)
    cross, heldout, pair = _brute_overlap(items, dropped)
    assert cross == heldout == 0 and not pair.any()
    _assert_disjoint_by_index(dropped)


def test_coin_assignment_deals_each_position_by_an_independent_fair_coin():
    pool = np.arange(50_000)[:, None]  # distinct items
    fixed, _ = splits_lib.make_splits(pool, 2, 20_000, 100, seed=3)
    coin, overlap = splits_lib.make_splits(pool, 2, 20_000, 100, seed=3, assignment="coin")
    # Each position keeps its pair of items, and every split its size: disjoint by index.
    np.testing.assert_array_equal(np.sort(coin.train, axis=0), np.sort(fixed.train, axis=0))
    assert coin.train.shape == (2, 20_000) and overlap.clean
    np.testing.assert_array_equal(coin.heldout, fixed.heldout)
    # The canary (row 0 of the fixed split) lands where canary_twin says ...
    canary = coin.canary_twin
    np.testing.assert_array_equal(coin.train[canary, np.arange(20_000)], fixed.train[0])
    # ... in each twin half of the time, positions independent of their neighbours.
    assert abs(canary.mean() - 0.5) < 0.02
    assert abs(np.corrcoef(canary[:-1], canary[1:])[0, 1]) < 0.03
    again, _ = splits_lib.make_splits(pool, 2, 20_000, 100, seed=3, assignment="coin")
    np.testing.assert_array_equal(again.canary_twin, canary)


def test_coin_assignment_of_k_twins_is_a_uniform_permutation_per_position():
    pool = np.arange(40_000)[:, None]
    coin, _ = splits_lib.make_splits(pool, 4, 9_000, 10, seed=0, assignment="coin")
    counts = np.bincount(coin.canary_twin, minlength=4) / 9_000
    np.testing.assert_allclose(counts, 0.25, atol=0.02)
    assert len(np.unique(coin.train)) == 4 * 9_000


def test_coin_assignment_with_drop_overlap_sends_no_repeat_to_another_twin():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 300, (2000, 1))  # heavy repeats
    splits, overlap = splits_lib.make_splits(
        pool, 2, 100, 50, seed=1, drop_overlap=True, assignment="coin"
    )
    assert overlap.clean
    brute = [set(pool[g, 0]) for g in list(splits.train) + [splits.heldout]]
    assert not (brute[0] & brute[1]) and not ((brute[0] | brute[1]) & brute[2])
    with pytest.raises(ValueError, match="assignment"):
        splits_lib.make_splits(pool, 2, 100, 50, seed=1, assignment="coins")


def test_contiguous_assignment_is_the_authors_blocks_in_pool_order():
    # The authors' CelebA loader, re-implemented: split `index` is
    # arange(index * n, (index + 1) * n) of the files in order, the test set arange(-ntest, 0).
    pool_size, k, n, m = 202_599, 15, 1024, 2048
    splits, overlap = splits_lib.make_splits(
        np.zeros((pool_size, 1), np.int8), k, n, m, seed=7, assignment="contiguous"
    )
    for index in range(k):
        np.testing.assert_array_equal(splits.train[index], np.arange(index * n, (index + 1) * n))
    np.testing.assert_array_equal(splits.heldout, np.arange(pool_size)[np.arange(-m, 0)])
    assert splits.canary_twin is None
    # Every item equal: the report sees the overlap, and does not move a block.
    assert not overlap.clean
    other_seed, _ = splits_lib.make_splits(
        np.zeros((pool_size, 1), np.int8), k, n, m, seed=0, assignment="contiguous"
    )
    np.testing.assert_array_equal(other_seed.train, splits.train)


def test_contiguous_assignment_refuses_drop_overlap_and_a_pool_too_small():
    pool = np.arange(100)[:, None]
    with pytest.raises(ValueError, match="drop_overlap = False"):
        splits_lib.make_splits(pool, 2, 10, 5, seed=0, drop_overlap=True, assignment="contiguous")
    with pytest.raises(ValueError, match="exceeds pool_size"):
        splits_lib.make_splits(pool, 2, 50, 5, seed=0, assignment="contiguous")
