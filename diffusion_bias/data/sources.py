"""The data of a run: the pool a config names, the twins' splits, their centring.

Four sources (the paper (arXiv 2603.03469), "Setting 1", "Setting 2", "Data no one here wrote"):
"grammar" (`grammar_pool.grammar_pool`, int32 tokens [N, L]), "digits",
"tfds" and "image_folder" (`images.digits_pool`, `images.tfds_pool`,
`image_folder.folder_pool`, float32 images [N, H, W, C]).
`load_pool` builds the one `config.name` names, `make_twin_data` gathers the
K disjoint splits and the held-out pool, `center` subtracts the training
per-channel mean, and `twin_means` gives the shift of each twin (none, pooled
or per split). Nothing here reads flags.
"""

from collections.abc import Mapping
import dataclasses
import os
from typing import Any

from absl import logging
import numpy as np
import numpy.typing as npt

from diffusion_bias.data import grammar_pool
from diffusion_bias.data import image_folder
from diffusion_bias.data import images
from diffusion_bias.data import pool as pool_lib
from diffusion_bias.data import splits as splits_lib

CENTERINGS = ("none", "pooled", "per_split")


@dataclasses.dataclass(frozen=True, eq=False)
class TwinData:
    """The items of K disjoint training splits and of one held-out pool.

    Attributes:
        train: [K, n, ...] items of each split, read-only; train[k] is
            pool.items[splits.train[k]].
        heldout: [m, ...] held-out items, read-only.
        splits: the pool indices of the groups.
        overlap: the content-overlap report of the groups.
    """

    train: np.ndarray  # [K, n, ...]
    heldout: np.ndarray  # [m, ...]
    splits: splits_lib.Splits
    overlap: splits_lib.Overlap

    def __post_init__(self):
        object.__setattr__(self, "train", pool_lib.read_only(self.train))
        object.__setattr__(self, "heldout", pool_lib.read_only(self.heldout))


def center(
    train_items: npt.ArrayLike, *others: npt.ArrayLike
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Subtracts the per-channel mean of the training items from every array.

    The paper centres CelebA by its per-channel mean; taking the mean over the
    training items only keeps held-out data out of the preprocessing. With twin
    splits stacked as [K, n, H, W, C] the mean is over all K splits, so every twin
    sees the same shift.

    Args:
        train_items: float [..., C] training items (e.g. [n, H, W, C] or
            [K, n, H, W, C]).
        *others: float [..., C] arrays to shift by the same mean (held-out items).

    Returns:
        ((train_centred, *others_centred), mean): the arrays in their input order
        and dtypes, and the mean [C] in the dtype of `train_items`.
    """
    train_items = np.asarray(train_items)
    arrays = (train_items,) + tuple(np.asarray(a) for a in others)
    for a in arrays:
        if a.dtype.kind != "f":
            raise ValueError(f"center needs floating-point items, got {a.dtype}")
        if a.ndim < 1 or a.shape[-1] != train_items.shape[-1]:
            raise ValueError(
                f"all arrays need the {train_items.shape[-1]} channels of the training "
                f"items on the last axis, got shape {a.shape}"
            )
    channels = train_items.shape[-1]
    # Accumulate in float64: a float32 sum over 10^8 pixels loses digits.
    mean = train_items.reshape(-1, channels).mean(axis=0, dtype=np.float64)
    mean = mean.astype(train_items.dtype)  # [C]
    return tuple((a - mean).astype(a.dtype) for a in arrays), mean


def twin_offsets(offsets: npt.ArrayLike, ndim: int) -> np.ndarray:
    """Twin offsets [..., C] reshaped to broadcast over items of rank `ndim`.

    [K, C] against twin-stacked items [K, N, ..., C] gives [K, 1, ..., 1, C];
    one twin's [C] against [N, ..., C] gives [1, ..., 1, C].
    """
    offsets = np.asarray(offsets)
    return offsets.reshape(offsets.shape[:-1] + (1,) * (ndim - offsets.ndim) + (-1,))


def twin_means(train_items: npt.ArrayLike, centering: str) -> np.ndarray:
    """The per-channel shift each twin's training items are centred by.

    "none": no shift; "pooled": the mean over all K splits (every twin the same
    shift, `center`); "per_split": each split's own mean, as the paper's authors
    centre each training set (and its test set) by that set's mean.

    Args:
        train_items: float [K, n, ..., C] the twins' training items.
        centering: one of CENTERINGS.

    Returns:
        [K, C] the means, in the dtype of `train_items` (zeros for "none").
    """
    train_items = np.asarray(train_items)
    if centering not in CENTERINGS:
        raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
    if train_items.dtype.kind != "f" or train_items.ndim < 3:
        raise ValueError(
            f"twin_means needs float [K, n, ..., C] items, got {train_items.dtype} "
            f"{train_items.shape}"
        )
    num_twins, channels = train_items.shape[0], train_items.shape[-1]
    if centering == "none":
        return np.zeros((num_twins, channels), train_items.dtype)
    if centering == "pooled":
        _, mean = center(train_items)
        return np.broadcast_to(mean, (num_twins, channels)).copy()
    # Accumulate in float64, as `center`.
    flat = train_items.reshape(num_twins, -1, channels)
    return flat.mean(axis=1, dtype=np.float64).astype(train_items.dtype)


# ----------------------------------------------------------------------------
# Dispatch and splits
# ----------------------------------------------------------------------------

# The config fields of each source: (required, optional). An optional field
# absent from the config keeps the source's default (a grammar config saved
# before `grammar_rng` existed draws the "default" grammar, as it did). The tfds
# data set is `config.dataset`, since `config.name` names the source.
FIELDS = {
    "grammar": (
        ("q", "depth", "sigma", "q_eff", "grammar_seed", "pool_size", "pool_seed"),
        ("cache_dir", "grammar_rng"),
    ),
    "digits": ((), ("pixel_range",)),
    "tfds": (
        ("dataset",),
        ("split", "image_size", "grayscale", "max_items", "data_dir", "pixel_range"),
    ),
    "image_folder": (
        ("path",),
        ("image_size", "grayscale", "pixel_range", "max_items", "cache_dir"),
    ),
}


def load_pool(
    config: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None = None
) -> pool_lib.Pool:
    """Builds the pool a data config names.

    `config.name` picks the source; its fields (`FIELDS`) are read from the
    config (`config.q`, `config.pool_size`, ... for "grammar"). Optional fields
    absent from the config keep their defaults; a field the source does not take
    is an error.

    Args:
        config: ml_collections.ConfigDict (or any mapping) with `name` and the
            fields of the source.
        cache_dir: cache directory for the sources that cache (grammar, image
            folder), used when
            the config sets no `cache_dir` of its own (absent, None or "").

    Returns:
        The pool.

    Raises:
        ValueError: unknown `name` (the message lists the valid ones), a
            required field is missing, or a field is not the source's.
    """
    name = config["name"] if "name" in config else None
    if name not in FIELDS:
        raise ValueError(f"unknown data source name {name!r}; valid names: {sorted(FIELDS)}")
    required, optional = FIELDS[name]
    known = set(required) | set(optional) | {"name"}
    unknown = sorted(set(config.keys()) - known)
    if unknown:
        raise ValueError(
            f"data source {name!r} has no fields {unknown}; its fields are {sorted(known)}"
        )
    missing = [field for field in required if field not in config]
    if missing:
        raise ValueError(f"data source {name!r} needs config fields {missing}")
    kwargs = {field: config[field] for field in required + optional if field in config}
    if name == "grammar":
        kwargs["cache_dir"] = kwargs.get("cache_dir") or cache_dir
        return grammar_pool.grammar_pool(**kwargs)
    if name == "digits":
        return images.digits_pool(**kwargs)
    if name == "image_folder":
        kwargs["cache_dir"] = kwargs.get("cache_dir") or cache_dir
        return image_folder.folder_pool(**kwargs)
    return images.tfds_pool(kwargs.pop("dataset"), **kwargs)


def make_twin_data(
    pool: pool_lib.Pool,
    num_splits: int,
    split_size: int,
    heldout_size: int,
    seed: int,
    drop_overlap: bool = False,
    assignment: str = "fixed",
) -> TwinData:
    """Gathers K disjoint training splits and a held-out pool from a pool.

    A thin wrapper over `splits.make_splits` (same arguments, same permutation)
    that also gathers the items and logs the content-overlap summary.

    Args:
        pool: the pool.
        num_splits: K.
        split_size: n.
        heldout_size: m.
        seed: seed of the permutation.
        drop_overlap: skip items whose content is already in another group.
        assignment: "fixed" or "coin" (`splits.make_splits`).

    Returns:
        TwinData with train [K, n, ...] and heldout [m, ...] items.
    """
    splits, overlap = splits_lib.make_splits(
        pool.items,
        num_splits=num_splits,
        split_size=split_size,
        heldout_size=heldout_size,
        seed=seed,
        drop_overlap=drop_overlap,
        assignment=assignment,
    )
    logging.info("%s pool of %d: %s", pool.info.get("name"), len(pool), overlap.summary())
    return TwinData(
        train=pool.items[splits.train],
        heldout=pool.items[splits.heldout],
        splits=splits,
        overlap=overlap,
    )
