"""Disjoint training splits and a held-out pool, with a content-overlap audit.

The instrument of the paper trains K twin models on K disjoint sets of n items each
and evaluates them on one held-out pool (the paper (arXiv 2603.03469), "The instrument"). Split i takes
positions [i*n, (i+1)*n) of one seeded permutation of the pool and the held-out pool
takes the next m positions, so the groups are disjoint *by index*. A pool drawn from
a distribution can still hold the same content at two indices (the same 16-token
sequence twice); twins that both train on it agree on it without generalising.
`content_overlap` measures this and `make_splits(..., drop_overlap=True)` builds
groups that share no content.

The permutation is always `np.random.default_rng(seed).permutation(pool_size)`.
`assignment="contiguous"` takes no permutation: split i is the pool's items
[i*n, (i+1)*n) in their stored order and the held-out pool its last m items, as
the paper's authors split CelebA (their file order: `data.image_folder`).

`assignment="coin"` then deals each position i of the splits out by an
independent uniformly random permutation of the K twins (for K = 2, one fair
coin per pair): the item drawn for twin 0 at position i, the position's
*canary*, lands in each twin with probability 1/K, independently across
positions, while every split keeps n items. The one-run privacy audit
(`statistics.privacy`) assumes exactly such independent coins.
"""

import dataclasses

import numpy as np
import numpy.typing as npt

from diffusion_bias import checks


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Pool indices of K training splits and of the held-out pool.

    Attributes:
        train: int64 [K, n], row i holds the pool indices of split i.
        heldout: int64 [m], pool indices of the held-out pool (m may be 0).
    """

    train: np.ndarray  # [K, n]
    heldout: np.ndarray  # [m]
    # With assignment="coin": [n], the twin each position's canary landed in.
    canary_twin: np.ndarray | None = None

    def __post_init__(self):
        # Read-only copies: `frozen` alone would still let a caller overwrite the
        # indices in place and silently break disjointness.
        train = np.array(self.train, dtype=np.int64)
        heldout = np.array(self.heldout, dtype=np.int64)
        if train.ndim != 2 or heldout.ndim != 1:
            raise ValueError(
                f"Splits needs train [K, n] and heldout [m], got shapes "
                f"{train.shape} and {heldout.shape}"
            )
        train.setflags(write=False)
        heldout.setflags(write=False)
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "heldout", heldout)
        if self.canary_twin is not None:
            canary = np.array(self.canary_twin, dtype=np.int64)
            if canary.shape != train.shape[1:]:
                raise ValueError(f"canary_twin must be [n] = {train.shape[1:]}, got {canary.shape}")
            canary.setflags(write=False)
            object.__setattr__(self, "canary_twin", canary)

    @property
    def num_splits(self) -> int:
        return self.train.shape[0]

    @property
    def split_size(self) -> int:
        return self.train.shape[1]


@dataclasses.dataclass(frozen=True, eq=False)
class Overlap:
    """Content shared across groups (the K splits, then the held-out pool).

    Repeats inside one group are not counted: they are genuine draws of the data
    distribution, not leakage between twins.

    Attributes:
        cross_split: number of split items whose content also occurs in another split.
        split_heldout: number of held-out items whose content also occurs in a split.
        pair_counts: int64 [K+1, K+1]; entry (g, h) is the number of items of group g
            whose content occurs in group h (g != h); the diagonal is 0; the last row
            and column are the held-out pool.
    """

    cross_split: int
    split_heldout: int
    pair_counts: np.ndarray  # [K+1, K+1]

    @property
    def clean(self) -> bool:
        """True when no content is shared between any two groups."""
        # Sharing is symmetric, so an all-zero matrix is exactly "nothing shared".
        return not np.any(self.pair_counts)

    def summary(self) -> str:
        """One line for logs."""
        num_groups = self.pair_counts.shape[0]
        if self.clean:
            return f"content overlap: clean ({num_groups - 1} splits + held-out)"
        g, h = np.unravel_index(np.argmax(self.pair_counts), self.pair_counts.shape)
        name = lambda i: "held-out" if i == num_groups - 1 else f"split {i}"
        return (
            f"content overlap: {self.cross_split} split items shared with another "
            f"split, {self.split_heldout} held-out items also in a split; worst: "
            f"{self.pair_counts[g, h]} items of {name(g)} occur in {name(h)}"
        )


def _check_int(name, value, minimum):
    if not checks.is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_args(pool_size, num_splits, split_size, heldout_size, seed):
    pool_size = _check_int("pool_size", pool_size, 1)
    num_splits = _check_int("num_splits", num_splits, 1)
    split_size = _check_int("split_size", split_size, 1)
    heldout_size = _check_int("heldout_size", heldout_size, 0)
    seed = _check_int("seed", seed, 0)
    needed = num_splits * split_size + heldout_size
    if needed > pool_size:
        raise ValueError(
            f"num_splits * split_size + heldout_size = {needed} exceeds pool_size = {pool_size}"
        )
    return pool_size, num_splits, split_size, heldout_size, seed


def split_indices(
    pool_size: int, num_splits: int, split_size: int, heldout_size: int, seed: int
) -> Splits:
    """K disjoint splits and a held-out pool, by position in a seeded permutation.

    With perm = np.random.default_rng(seed).permutation(pool_size), split i is
    perm[i*n:(i+1)*n] and the held-out pool is perm[K*n:K*n + m].

    Args:
        pool_size: number of items in the pool, N >= 1.
        num_splits: K >= 1.
        split_size: n >= 1.
        heldout_size: m >= 0.
        seed: non-negative integer seeding the permutation.

    Returns:
        Splits with train int64 [K, n] and heldout int64 [m].

    Raises:
        ValueError: an argument is not an integer, is out of range, or K*n + m > N.
    """
    pool_size, num_splits, split_size, heldout_size, seed = _check_args(
        pool_size, num_splits, split_size, heldout_size, seed
    )
    perm = np.random.default_rng(seed).permutation(pool_size)
    used = num_splits * split_size
    return Splits(
        train=perm[:used].reshape(num_splits, split_size), heldout=perm[used : used + heldout_size]
    )


def _as_pool(items):
    items = np.asarray(items)
    if items.ndim == 0:
        raise ValueError("items must have a leading item axis [N, ...], got a scalar")
    return items


def content_ids(items: npt.ArrayLike) -> np.ndarray:
    """Labels each item by its content: equal items get equal ids.

    Args:
        items: array [N, ...]; each item is compared as one flattened row.

    Returns:
        int64 [N], ids in [0, U) where U is the number of distinct items; the
        numbering is deterministic but otherwise arbitrary.
    """
    items = _as_pool(items)
    rows = np.ascontiguousarray(items.reshape(items.shape[0], -1))  # [N, D]
    if rows.dtype.kind not in "biuf" or rows.dtype.itemsize > 8:
        raise ValueError(f"items must be booleans, integers or floats, got {rows.dtype}")
    if rows.shape[1] == 0:
        return np.zeros(rows.shape[0], dtype=np.int64)  # all items are empty, equal
    if rows.dtype.kind == "f":
        # Byte equality must mean value equality: -0.0 + 0 is +0.0, and every
        # NaN gets one bit pattern (so NaN content equals itself).
        rows = np.where(np.isnan(rows), np.nan, rows + 0).astype(rows.dtype)
    # One opaque bytes field per row: np.unique then sorts whole rows, 5-10x
    # faster than axis=0, which compares a structured array field by field.
    rows = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
    _, inverse = np.unique(rows.reshape(-1), return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _groups(splits):
    return list(splits.train) + [splits.heldout]


def _check_indices(pool_size, splits):
    for g in _groups(splits):
        if g.size and (g.min() < 0 or g.max() >= pool_size):
            raise ValueError(
                f"splits index outside the pool of {pool_size} items (min {g.min()}, max {g.max()})"
            )


def _overlap_from_ids(ids, splits):
    """`content_overlap` given the content ids int64 [N] of the whole pool."""
    groups = [ids[g] for g in _groups(splits)]  # K+1 arrays of content ids
    num_contents = int(ids.max()) + 1 if ids.size else 0
    # [K+1, U] bool (16 MB for K=15, U=10^6): cheaper than sorting to compact it.
    present = np.zeros((len(groups), num_contents), dtype=bool)
    for g, ids_g in enumerate(groups):
        present[g, ids_g] = True
    # Row g: for each group h, how many items of g have content present in h.
    pair_counts = np.stack([present[:, ids_g].sum(axis=1) for ids_g in groups])
    pair_counts = pair_counts.astype(np.int64)  # [K+1, K+1]
    # Every item occurs in its own group; that is not overlap.
    np.fill_diagonal(pair_counts, 0)
    splits_with = present[:-1].sum(axis=0)  # [U] number of splits holding each
    cross_split = sum(int(np.sum(splits_with[ids_g] >= 2)) for ids_g in groups[:-1])
    split_heldout = int(np.sum(splits_with[groups[-1]] >= 1))
    return Overlap(cross_split=cross_split, split_heldout=split_heldout, pair_counts=pair_counts)


def content_overlap(items: npt.ArrayLike, splits: Splits) -> Overlap:
    """Reports content shared between the splits and the held-out pool.

    Args:
        items: the whole pool, array [N, ...], indexed by `splits`.
        splits: the groups to audit.

    Returns:
        Overlap; repeats inside one group do not count.
    """
    items = _as_pool(items)
    _check_indices(items.shape[0], splits)
    return _overlap_from_ids(content_ids(items), splits)


def _fill_without_overlap(ids, perm, sizes, distinct=()):
    """Walks `perm` once, filling groups in order, skipping content owned elsewhere.

    Equal to the item-by-item walk: while group g fills, only contents owned by an
    earlier group are skipped (g's own repeats are kept, unless g is in `distinct`:
    then a content's later occurrences are skipped too), so the allowed set is
    fixed over g's whole stretch and one vectorised pass per group finds its first
    `size` allowed positions.

    Args:
        ids: int64 [N], content id of each pool item.
        perm: int64 [N], the permutation of the pool.
        sizes: K+1 group sizes (the splits, then the held-out pool).
        distinct: indices of the groups that keep one item per content.

    Returns:
        K+1 int64 arrays of pool indices, of lengths `sizes`.
    """
    owner = np.full(int(ids.max()) + 1, -1, dtype=np.int64)  # [U] group of content
    walked = ids[perm]  # [N] content at each step of the walk
    start, groups = 0, []
    for g, size in enumerate(sizes):
        if size == 0:
            groups.append(np.zeros(0, dtype=np.int64))
            continue
        rest = walked[start:]
        allowed = owner[rest] == -1
        if g in distinct:
            first = np.zeros(len(rest), bool)
            first[np.unique(rest, return_index=True)[1]] = True
            allowed &= first
        positions = np.flatnonzero(allowed)[:size]
        if len(positions) < size:
            name = "the held-out pool" if g == len(sizes) - 1 else f"split {g}"
            raise ValueError(
                f"drop_overlap: the pool ran out of distinct content while filling "
                f"{name}: it needs {size} items whose content is in no earlier group "
                f"but only {len(positions)} remain in the last {len(rest)} of "
                f"{len(perm)} positions ({len(owner)} distinct contents in the pool); "
                f"use fewer or smaller groups, or a larger pool"
            )
        owner[rest[positions]] = g
        groups.append(perm[start + positions].astype(np.int64))
        start += int(positions[-1]) + 1
    return groups


ASSIGNMENTS = ("fixed", "coin", "contiguous")


def contiguous_indices(
    pool_size: int, num_splits: int, split_size: int, heldout_size: int
) -> Splits:
    """K disjoint splits in the pool's order, and its last m items held out.

    Split i is [i*n, (i+1)*n) and the held-out pool [N - m, N): the authors'
    CelebA protocol (their loader's `arange(index * n, (index + 1) * n)` and
    `arange(-ntest, 0)` over the files in natural order).

    Returns:
        Splits with train int64 [K, n] and heldout int64 [m].

    Raises:
        ValueError: an argument is not an integer, is out of range, or K*n + m > N.
    """
    pool_size, num_splits, split_size, heldout_size, _ = _check_args(
        pool_size, num_splits, split_size, heldout_size, 0
    )
    train = np.arange(num_splits * split_size).reshape(num_splits, split_size)
    return Splits(train=train, heldout=np.arange(pool_size - heldout_size, pool_size))


def assign_by_coins(splits: Splits, seed: int) -> Splits:
    """Deals each position of the splits out by an independent random permutation of the twins.

    Position i's items (one per split) go to the K twins in the order of a
    uniformly random permutation drawn for i alone (seeded by (seed, 1), a
    stream apart from the pool's permutation). The item of row 0, the
    position's canary, lands in twin `canary_twin[i]`.

    Returns:
        Splits with the same items per position, train [K, n], and canary_twin [n].
    """
    num_splits, split_size = splits.train.shape
    order = np.tile(np.arange(num_splits), (split_size, 1))  # [n, K]
    order = np.random.default_rng([seed, 1]).permuted(order, axis=1)
    train = np.empty_like(splits.train)
    # The item of row j at position i goes to twin order[i, j].
    train[order.T, np.arange(split_size)[None]] = splits.train
    return Splits(train=train, heldout=splits.heldout, canary_twin=order[:, 0])


def make_splits(
    items: npt.ArrayLike,
    num_splits: int,
    split_size: int,
    heldout_size: int,
    seed: int,
    drop_overlap: bool = False,
    assignment: str = "fixed",
) -> tuple[Splits, Overlap]:
    """Builds the splits of a pool and audits them for shared content.

    Without `drop_overlap` this is `split_indices` plus its overlap report. With
    `drop_overlap` the same seeded permutation is walked once, filling split 0, ...,
    split K-1, then the held-out pool, skipping any item whose content already
    belongs to a different group; repeats inside one group are kept. A content
    belongs to the first group that takes it, so a group of n items may claim fewer
    than n contents. Every group keeps its size and the report is clean.

    Args:
        items: the pool, array [N, ...].
        num_splits: K >= 1.
        split_size: n >= 1.
        heldout_size: m >= 0.
        seed: non-negative integer; the walk is
            np.random.default_rng(seed).permutation(N).
        drop_overlap: skip cross-group duplicates instead of only reporting them.
        assignment: "fixed" (split i takes the i-th n items of the walk),
            "coin" (then `assign_by_coins`; with `drop_overlap` the splits' K*n
            items are walked as one group of distinct contents, so that no coin
            can send a repeat to another twin), or "contiguous"
            (`contiguous_indices`, no walk: `seed` is unused and `drop_overlap`
            is refused, since skipping an item would move every block after it).

    Returns:
        (splits, overlap): Splits with train int64 [K, n] and heldout int64 [m], and
        their Overlap report.

    Raises:
        ValueError: bad arguments, or with `drop_overlap` the pool holds too little
            distinct content to fill every group.
    """
    items = _as_pool(items)
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    coin = assignment == "coin"
    if assignment == "contiguous":
        if drop_overlap:
            raise ValueError(
                "assignment 'contiguous' keeps the pool's blocks as they are: it needs "
                "drop_overlap = False"
            )
        splits = contiguous_indices(items.shape[0], num_splits, split_size, heldout_size)
        return splits, content_overlap(items, splits)
    if not drop_overlap:
        splits = split_indices(items.shape[0], num_splits, split_size, heldout_size, seed)
        splits = assign_by_coins(splits, seed) if coin else splits
        return splits, content_overlap(items, splits)
    pool_size, num_splits, split_size, heldout_size, seed = _check_args(
        items.shape[0], num_splits, split_size, heldout_size, seed
    )
    ids = content_ids(items)
    perm = np.random.default_rng(seed).permutation(pool_size)
    if coin:
        twins, heldout = _fill_without_overlap(
            ids, perm, [num_splits * split_size, heldout_size], distinct=(0,)
        )
        splits = Splits(train=twins.reshape(num_splits, split_size), heldout=heldout)
        splits = assign_by_coins(splits, seed)
    else:
        groups = _fill_without_overlap(ids, perm, [split_size] * num_splits + [heldout_size])
        splits = Splits(train=np.stack(groups[:-1]), heldout=groups[-1])
    return splits, _overlap_from_ids(ids, splits)
