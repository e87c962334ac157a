"""Data sources: the pools the twin splits are drawn from, as numpy arrays.

Three sources (PAPER.md, "Setting 1", "Setting 2", "Data no one here wrote"):
- `grammar_pool`: sequences of the random tree grammar, int32 tokens [N, L];
- `digits_pool`: the UCI handwritten digits shipped with scikit-learn, float32
  images [1797, 8, 8, 1], the embedded real-image default (no download);
- `tfds_pool`: CelebA, MNIST, CIFAR-10, ... through tensorflow-datasets without
  TensorFlow (`tfds.data_source`), float32 images [N, S, S, C].

Images are scaled to [-1, 1] ("symmetric") or to [0, 1] ("unit", torchvision's
ToTensor, the paper's CelebA). `center` subtracts the training per-channel mean,
`twin_means` gives the shift of each twin (none, pooled or per split),
`make_twin_data` gathers the K disjoint splits and the held-out pool of a pool,
and `load_pool` dispatches on `config.name`. Nothing here reads flags.
"""

import dataclasses
import functools
import hashlib
import inspect
import json
import numbers
import os
import tempfile
import time
from typing import Any

from absl import logging
import numpy as np

from diffusion_bias import grammar as grammar_lib
from diffusion_bias.data import splits as splits_lib

KINDS = ("tokens", "images")

# Bump when the sampling code changes the pool drawn for given parameters: the
# version is hashed into the cache file name, so stale caches are never read.
_CACHE_VERSION = 1

PIXEL_RANGES = ("symmetric", "unit")
CENTERINGS = ("none", "pooled", "per_split")

# ITU-R BT.601 luma weights (R, G, B), as in PIL's "L" conversion.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Images decoded and converted per step in `tfds_pool`: 512 CelebA images at full
# resolution are ~60 MB of uint8 and ~120 MB as grey float32, so the 162k images
# never sit in memory at full resolution.
_TFDS_CHUNK = 512


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
    """All items one experiment may draw its splits from.

    Attributes:
        items: the items, read-only; int32 [N, L] tokens when `kind` is "tokens",
            float32 [N, H, W, C] images in [-1, 1] when `kind` is "images".
        kind: "tokens" or "images".
        info: small JSON-friendly dict of provenance (source name, sizes, seeds).
        grammar: the grammar that generated the tokens (token pools only).
        labels: int64 [N] class labels where the source has them cheaply, else None.
    """

    items: np.ndarray
    kind: str
    info: dict[str, Any]
    grammar: grammar_lib.Grammar | None = None
    labels: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        items = _read_only(self.items)
        if self.kind == "tokens" and (items.ndim != 2 or items.dtype != np.int32):
            raise ValueError(f"token items must be int32 [N, L], got {items.dtype} {items.shape}")
        if self.kind == "images" and (items.ndim != 4 or items.dtype != np.float32):
            raise ValueError(
                f"image items must be float32 [N, H, W, C], got {items.dtype} {items.shape}"
            )
        object.__setattr__(self, "items", items)
        if self.labels is not None:
            labels = _read_only(self.labels)
            if labels.shape != items.shape[:1]:
                raise ValueError(
                    f"labels must have shape [N] = {items.shape[:1]}, got {labels.shape}"
                )
            object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return self.items.shape[0]


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
        object.__setattr__(self, "train", _read_only(self.train))
        object.__setattr__(self, "heldout", _read_only(self.heldout))


def _is_int(value) -> bool:
    # bool is an Integral; True as an image size is a bug, not 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _read_only(array) -> np.ndarray:
    # A view has its own flags: the pool is read-only without copying (CelebA is
    # ~0.7 GB) and without changing the flags of the caller's array.
    view = np.asarray(array).view()
    view.setflags(write=False)
    return view


# ----------------------------------------------------------------------------
# Grammar pool
# ----------------------------------------------------------------------------


def _grammar_params(q, depth, sigma, q_eff, grammar_seed, pool_size, pool_seed):
    # Normalised types, so that 1 and 1.0 (sigma) or numpy ints hash alike.
    return {
        "q": int(q),
        "depth": int(depth),
        "sigma": float(sigma),
        "q_eff": int(q_eff),
        "grammar_seed": int(grammar_seed),
        "pool_size": int(pool_size),
        "pool_seed": int(pool_seed),
        "version": _CACHE_VERSION,
    }


def grammar_cache_path(cache_dir, params: dict[str, Any]) -> str:
    """The cache file of a grammar pool: cache_dir/grammar_pool_<hash>.npz."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(os.fspath(cache_dir), f"grammar_pool_{key}.npz")


def _load_grammar_cache(path, params, grammar) -> np.ndarray:
    """Reads a cached pool, checking it against the parameters that asked for it.

    Raises:
        ValueError: the file does not hold the pool of these parameters.
        OSError, EOFError, zipfile.BadZipFile, KeyError: the file is unreadable.
    """
    with np.load(path, allow_pickle=False) as data:
        stored = json.loads(str(data["params"]))
        items = np.asarray(data["items"])
        transitions = np.asarray(data["transitions"])
    if stored != params:
        raise ValueError(f"parameters {stored} differ from the requested {params}")
    # The grammar is redrawn from its seed: a change in `random_grammar` would
    # otherwise pair a stale pool with a new grammar.
    if not np.array_equal(transitions, grammar.transitions):
        raise ValueError("stored grammar differs from random_grammar(...) of its seed")
    shape = (params["pool_size"], grammar.length)
    if items.dtype != np.int32 or items.shape != shape:
        raise ValueError(f"items are {items.dtype} {items.shape}, expected int32 {shape}")
    if items.min() < 0 or items.max() >= grammar.q:
        raise ValueError(f"tokens outside [0, {grammar.q})")
    return items


def _save_grammar_cache(path, params, grammar, items):
    """Writes the cache atomically: a reader sees the old file or the whole new one."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    # Same directory as the target, so os.replace is a rename within one file system.
    fd, tmp = tempfile.mkstemp(prefix=".grammar_pool_", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            # A file object keeps savez from appending ".npz" to the temp name.
            np.savez(
                f,
                items=items,
                transitions=grammar.transitions,
                params=np.array(json.dumps(params, sort_keys=True)),
            )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def grammar_pool(
    q: int,
    depth: int,
    sigma: float,
    q_eff: int,
    grammar_seed: int,
    pool_size: int,
    pool_seed: int,
    cache_dir=None,
) -> Pool:
    """A pool of sequences of the random tree grammar (PAPER.md, "Setting 2").

    The grammar is `grammar.random_grammar(q, depth, sigma, q_eff, grammar_seed)`
    and the items are `grammar.sample(grammar, pool_size, pool_seed)`, so the pool
    is fully determined by the parameters. With `cache_dir` the pool is stored as
    `cache_dir/grammar_pool_<hash of the parameters>.npz` and read back by the next
    call with the same parameters; a cache file that is unreadable or does not match
    the parameters is regenerated with a warning.

    Args:
        q: vocabulary size.
        depth: tree depth; sequences have L = 2**depth tokens.
        sigma: scale of the transition logits.
        q_eff: allowed child pairs per parent symbol.
        grammar_seed: seed of the grammar.
        pool_size: number of sequences N.
        pool_seed: seed of the sampling.
        cache_dir: directory of the cache, created if missing; None or "" for no
            cache.

    Returns:
        Pool of kind "tokens": items int32 [N, L], `grammar` set, `info` holding the
        parameters and the cache path (or None).

    Raises:
        ValueError: a parameter is out of range (from `random_grammar`/`sample`).
    """
    # The grammar first: it validates q, depth, sigma and q_eff with clear messages.
    grammar = grammar_lib.random_grammar(
        q=q, depth=depth, sigma=sigma, q_eff=q_eff, seed=grammar_seed
    )
    params = _grammar_params(q, depth, sigma, q_eff, grammar_seed, pool_size, pool_seed)
    path = grammar_cache_path(cache_dir, params) if cache_dir else None
    items = None
    if path is not None and os.path.exists(path):
        try:
            items = _load_grammar_cache(path, params, grammar)
            logging.info("grammar pool: read %s", path)
        except Exception as e:  # pylint: disable=broad-except
            # Any unreadable or mismatched file is only a cache: redraw the pool.
            logging.warning(
                "grammar pool: cache %s is unusable (%s: %s); regenerating",
                path,
                type(e).__name__,
                e,
            )
    if items is None:
        start = time.perf_counter()
        items = grammar_lib.sample(grammar, pool_size, pool_seed)
        logging.info(
            "grammar pool: sampled %d sequences in %.1f s", pool_size, time.perf_counter() - start
        )
        if path is not None:
            _save_grammar_cache(path, params, grammar, items)
            logging.info("grammar pool: wrote %s", path)
    info = {
        "name": "grammar",
        **params,
        "num_items": int(pool_size),
        "length": grammar.length,
        "cache_path": path,
    }
    del info["version"]
    return Pool(items=items, kind="tokens", info=info, grammar=grammar)


# ----------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------


def _check_pixel_range(pixel_range):
    if pixel_range not in PIXEL_RANGES:
        raise ValueError(f"pixel_range must be one of {PIXEL_RANGES}, got {pixel_range!r}")


def digits_pool(pixel_range: str = "symmetric") -> Pool:
    """The UCI handwritten digits shipped with scikit-learn (no download).

    Values 0..16 map to x/8 - 1, exactly [-1, 1] ("symmetric"), or to x/16 in
    [0, 1] ("unit"). The 8x8 images are not padded: zero padding inflates the
    cosine similarities the statistics rely on (ENVIRONMENT.md, "Data facts").

    Returns:
        Pool of kind "images": items float32 [1797, 8, 8, 1], labels int64 [1797].
    """
    _check_pixel_range(pixel_range)
    # Imported here: scikit-learn takes a second to import, and only this pool needs it.
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    scaled = digits.images / 8.0 - 1.0 if pixel_range == "symmetric" else digits.images / 16.0
    items = scaled.astype(np.float32)[..., None]  # [N, 8, 8, 1]
    info = {
        "name": "digits",
        "pixel_range": pixel_range,
        "source": "sklearn.datasets.load_digits",
        "num_items": int(items.shape[0]),
        "image_shape": list(items.shape[1:]),
    }
    return Pool(items=items, kind="images", info=info, labels=digits.target.astype(np.int64))


@functools.lru_cache(maxsize=16)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The antialiased linear resampling of a line of pixels, as a matrix.

    Row i holds the weights of the input pixels in output pixel i: a triangle
    kernel centred on the output pixel's position in input coordinates, widened by
    in_size/out_size when downsampling (so each output averages its whole
    footprint instead of aliasing), normalised to sum to one. This is
    `jax.image.resize(..., method="linear", antialias=True)` along one axis (and
    PIL's bilinear reduction), written in numpy so that an image's result does not
    depend on the batch it is resized in.

    Args:
        in_size: number of input pixels.
        out_size: number of output pixels.

    Returns:
        float32 [out_size, in_size], read-only; non-negative rows summing to one.
    """
    inv_scale = in_size / out_size
    centres = (np.arange(out_size) + 0.5) * inv_scale - 0.5  # [out] input coords
    distance = np.abs(centres[:, None] - np.arange(in_size)[None, :])  # [out, in]
    weights = np.maximum(0.0, 1.0 - distance / max(inv_scale, 1.0))
    weights /= weights.sum(axis=1, keepdims=True)
    weights = weights.astype(np.float32)
    weights.setflags(write=False)  # shared by every caller through the cache
    return weights


def preprocess_images(
    images, image_size: int, grayscale: bool, pixel_range: str = "symmetric"
) -> np.ndarray:
    """Integer images of one shape to float32 squares in [-1, 1] or [0, 1].

    Centre-crops to a square (CelebA is 218x178), converts to grey-scale with the
    ITU-R 601 luma weights when asked, resizes with antialiased bilinear
    interpolation (`resize_matrix`; no TensorFlow), and maps [0, max] to [-1, 1]
    ("symmetric") or to [0, 1] ("unit", as torchvision's ToTensor) where max is
    the largest value of the integer dtype (255 for uint8).

    Args:
        images: unsigned integer [B, H, W, C] with C in {1, 3}.
        image_size: side S of the output.
        grayscale: reduce RGB to one luma channel; grey input stays one channel.
        pixel_range: "symmetric" ([-1, 1]) or "unit" ([0, 1]).

    Returns:
        float32 [B, S, S, C'], C' = 1 if grayscale or C == 1, else 3.
    """
    _check_pixel_range(pixel_range)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, C] with C in {{1, 3}}, got {images.shape}")
    if images.dtype.kind != "u":
        raise ValueError(f"images must be unsigned integers, got {images.dtype}")
    _, height, width, channels = images.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    # Crop before the float conversion: the discarded pixels are never copied.
    x = images[:, top : top + side, left : left + side].astype(np.float32)
    if grayscale and channels == 3:
        x = np.einsum("bhwc,c->bhw", x, LUMA_WEIGHTS)[..., None]  # [B, s, s, 1]
    if side != image_size:
        weights = resize_matrix(side, image_size)  # [S, s]
        # Separable: rows then columns, W x W^T per image and channel; numpy's
        # stacked matmul treats each [s, s] slice alone, batch-size independent.
        x = np.moveaxis(x, -1, 1)  # [B, C, s, s]
        x = weights @ x @ weights.T  # [B, C, S, S]
        x = np.moveaxis(x, 1, -1)  # [B, S, S, C]
    # The resize weights are non-negative and sum to one, so only float rounding
    # can leave the range; the clip removes it.
    if pixel_range == "unit":
        return np.clip(x / float(np.iinfo(images.dtype).max), 0.0, 1.0).astype(np.float32)
    half = np.iinfo(images.dtype).max / 2.0
    return np.clip(x / half - 1.0, -1.0, 1.0).astype(np.float32)


def tfds_pool(
    name: str,
    split: str = "train",
    image_size: int = 32,
    grayscale: bool = True,
    max_items: int | None = None,
    data_dir=None,
    pixel_range: str = "symmetric",
) -> Pool:
    """Images of a tensorflow-datasets data set, read without TensorFlow.

    Uses `tfds.data_source` (random access, numpy out) and converts `_TFDS_CHUNK`
    images at a time with `preprocess_images`, so a large data set (CelebA, 162k
    images of 218x178x3) never sits in memory at full resolution. Tested with
    "celeb_a", "mnist" and "cifar10"; any data set with an "image" feature works.

    Args:
        name: tfds name, e.g. "celeb_a".
        split: tfds split, e.g. "train" or "test".
        image_size: side S of the square output images.
        grayscale: convert RGB to one luma channel (the paper's CelebA setting).
        max_items: keep only the first `max_items` items by index; None for all.
        data_dir: tfds data directory; None for the tfds default.
        pixel_range: "symmetric" ([-1, 1]) or "unit" ([0, 1], the paper's CelebA).

    Returns:
        Pool of kind "images": items float32 [N, S, S, C] in that range; labels int64
        [N] when the data set has a "label" feature.

    Raises:
        ImportError: tensorflow-datasets is not installed.
        ValueError: bad arguments, or the data set has no "image" feature.
    """
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "tfds_pool needs tensorflow-datasets (TensorFlow is not needed); install "
            "it with: pip install -e '.[tfds]'"
        ) from e
    if not _is_int(image_size) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1, got {image_size!r}")
    if max_items is not None and (not _is_int(max_items) or max_items < 1):
        raise ValueError(f"max_items must be None or an integer >= 1, got {max_items!r}")
    _check_pixel_range(pixel_range)
    image_size = int(image_size)

    source = tfds.data_source(name, split=split, data_dir=data_dir)
    num_items = len(source) if max_items is None else min(len(source), max_items)
    if num_items == 0:
        raise ValueError(f"tfds {name!r} split {split!r} is empty")
    first = source[0]
    if not isinstance(first, dict) or "image" not in first:
        keys = sorted(first) if isinstance(first, dict) else type(first).__name__
        raise ValueError(f"tfds {name!r} has no 'image' feature (features: {keys})")
    has_labels = "label" in first

    start = time.perf_counter()
    items, labels = None, []
    for lo in range(0, num_items, _TFDS_CHUNK):
        # One record at a time: `source[i]` is the random-access read every tfds
        # data source (and its offline mock) supports.
        examples = [source[i] for i in range(lo, min(lo + _TFDS_CHUNK, num_items))]
        images = [np.asarray(ex["image"]) for ex in examples]
        if len({im.shape for im in images}) == 1:
            chunk = preprocess_images(np.stack(images), image_size, grayscale, pixel_range)
        else:  # data sets with images of varying sizes
            chunk = np.concatenate(
                [preprocess_images(im[None], image_size, grayscale, pixel_range) for im in images]
            )
        if items is None:
            items = np.empty((num_items,) + chunk.shape[1:], dtype=np.float32)
        items[lo : lo + len(chunk)] = chunk
        if has_labels:
            labels.extend(int(ex["label"]) for ex in examples)
        if (lo // _TFDS_CHUNK) % 50 == 49:
            logging.info("tfds %s: %d / %d images", name, lo + len(chunk), num_items)
    logging.info(
        "tfds %s[%s]: %d images %s in %.1f s",
        name,
        split,
        num_items,
        items.shape[1:],
        time.perf_counter() - start,
    )
    info = {
        "name": "tfds",
        "dataset": name,
        "split": split,
        "image_size": image_size,
        "grayscale": bool(grayscale),
        "pixel_range": pixel_range,
        "num_items": int(num_items),
        "source_image_shape": list(np.shape(first["image"])),
        "data_dir": None if data_dir is None else os.fspath(data_dir),
    }
    return Pool(
        items=items,
        kind="images",
        info=info,
        labels=np.array(labels, dtype=np.int64) if has_labels else None,
    )


def center(train_items, *others) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
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


def twin_offsets(offsets, ndim: int) -> np.ndarray:
    """Twin offsets [..., C] reshaped to broadcast over items of rank `ndim`.

    [K, C] against twin-stacked items [K, N, ..., C] gives [K, 1, ..., 1, C];
    one twin's [C] against [N, ..., C] gives [1, ..., 1, C].
    """
    offsets = np.asarray(offsets)
    return offsets.reshape(offsets.shape[:-1] + (1,) * (ndim - offsets.ndim) + (-1,))


def twin_means(train_items, centering: str) -> np.ndarray:
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

SOURCES = {"grammar": grammar_pool, "digits": digits_pool, "tfds": tfds_pool}

# Config fields whose name differs from the argument: `config.name` already names
# the source, so the tfds data set goes in `config.dataset`.
_FIELD_NAMES = {("tfds", "name"): "dataset"}


def load_pool(config, cache_dir=None) -> Pool:
    """Builds the pool a data config names.

    `config.name` picks the source in `SOURCES`; the source's arguments are read
    from the config fields of the same names (`config.q`, `config.pool_size`, ...
    for "grammar"), except the tfds data set, read from `config.dataset` because
    `config.name` is taken. Optional arguments absent from the config keep their
    defaults; a field the source does not take is an error.

    Args:
        config: ml_collections.ConfigDict (or any mapping) with `name` and the
            fields of the source.
        cache_dir: cache directory for the sources that cache (grammar), used when
            the config sets no `cache_dir` of its own (absent, None or "").

    Returns:
        The pool.

    Raises:
        ValueError: unknown `name` (the message lists the valid ones), a
            required field is missing, or a field is not the source's.
    """
    name = config["name"] if "name" in config else None
    if name not in SOURCES:
        raise ValueError(f"unknown data source name {name!r}; valid names: {sorted(SOURCES)}")
    fn = SOURCES[name]
    params = inspect.signature(fn).parameters
    known = {_FIELD_NAMES.get((name, p), p) for p in params} | {"name"}
    unknown = sorted(set(config.keys()) - known)
    if unknown:
        raise ValueError(
            f"data source {name!r} has no fields {unknown}; its fields are {sorted(known)}"
        )
    kwargs, missing = {}, []
    for param in params.values():
        field = _FIELD_NAMES.get((name, param.name), param.name)
        if field in config:
            kwargs[param.name] = config[field]
        elif param.default is inspect.Parameter.empty:
            missing.append(field)
    if missing:
        raise ValueError(f"data source {name!r} needs config fields {missing}")
    if "cache_dir" in inspect.signature(fn).parameters and not kwargs.get("cache_dir"):
        kwargs["cache_dir"] = cache_dir
    return fn(**kwargs)


def make_twin_data(
    pool: Pool,
    num_splits: int,
    split_size: int,
    heldout_size: int,
    seed: int,
    drop_overlap: bool = False,
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
    )
    logging.info("%s pool of %d: %s", pool.info.get("name"), len(pool), overlap.summary())
    return TwinData(
        train=pool.items[splits.train],
        heldout=pool.items[splits.heldout],
        splits=splits,
        overlap=overlap,
    )
