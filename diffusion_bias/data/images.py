"""Image pools: the embedded digits and tensorflow-datasets sets, as float32 squares.

- `digits_pool`: the UCI handwritten digits shipped with scikit-learn, float32
  images [1797, 8, 8, 1], the embedded real-image default (no download);
- `tfds_pool`: CelebA, MNIST, CIFAR-10, ... through tensorflow-datasets without
  TensorFlow (`tfds.data_source`), float32 images [N, S, S, C].

Images are scaled to [-1, 1] ("symmetric") or to [0, 1] ("unit", torchvision's
ToTensor, the paper's CelebA) by `preprocess_images`.
"""

import functools
import os
import time

from absl import logging
import numpy as np
import numpy.typing as npt

from diffusion_bias import checks
from diffusion_bias.data import pool as pool_lib

PIXEL_RANGES = ("symmetric", "unit")

# ITU-R BT.601 luma weights (R, G, B), as in PIL's "L" conversion.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Images decoded and converted per step in `tfds_pool`: 512 CelebA images at full
# resolution are ~60 MB of uint8 and ~120 MB as grey float32, so the 162k images
# never sit in memory at full resolution.
_TFDS_CHUNK = 512


def check_pixel_range(pixel_range: str) -> None:
    """Raises ValueError unless `pixel_range` is one of PIXEL_RANGES."""
    if pixel_range not in PIXEL_RANGES:
        raise ValueError(f"pixel_range must be one of {PIXEL_RANGES}, got {pixel_range!r}")


def digits_pool(pixel_range: str = "symmetric") -> pool_lib.Pool:
    """The UCI handwritten digits shipped with scikit-learn (no download).

    Values 0..16 map to x/8 - 1, exactly [-1, 1] ("symmetric"), or to x/16 in
    [0, 1] ("unit"). The 8x8 images are not padded: zero padding inflates the
    cosine similarities the statistics rely on (ENVIRONMENT.md, "Data facts").

    Returns:
        Pool of kind "images": items float32 [1797, 8, 8, 1], labels int64 [1797].
    """
    check_pixel_range(pixel_range)
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
    return pool_lib.Pool(
        items=items, kind="images", info=info, labels=digits.target.astype(np.int64)
    )


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
    images: npt.ArrayLike, image_size: int, grayscale: bool, pixel_range: str = "symmetric"
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
    check_pixel_range(pixel_range)
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
    data_dir: str | os.PathLike[str] | None = None,
    pixel_range: str = "symmetric",
) -> pool_lib.Pool:
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
    tfds = _import_tfds()
    _check_tfds_arguments(image_size, max_items, pixel_range)
    image_size = int(image_size)
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    num_items, first = _check_source(source, name, split, max_items)
    has_labels = "label" in first

    start = time.perf_counter()
    items, labels = _read_images(
        source, num_items, has_labels, name, image_size, grayscale, pixel_range
    )
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
    return pool_lib.Pool(
        items=items,
        kind="images",
        info=info,
        labels=np.array(labels, dtype=np.int64) if has_labels else None,
    )


def _import_tfds():
    """tensorflow_datasets, imported on first use: only this pool needs it."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "tfds_pool needs tensorflow-datasets (TensorFlow is not needed); install "
            "it with: pip install -e '.[tfds]'"
        ) from e
    return tfds


def _check_tfds_arguments(image_size, max_items, pixel_range):
    if not checks.is_int(image_size) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1, got {image_size!r}")
    if max_items is not None and (not checks.is_int(max_items) or max_items < 1):
        raise ValueError(f"max_items must be None or an integer >= 1, got {max_items!r}")
    check_pixel_range(pixel_range)


def _check_source(source, name, split, max_items):
    """The number of items to read and the first record, once the source is checked.

    Raises:
        ValueError: the split is empty, or its records have no "image" feature.
    """
    num_items = len(source) if max_items is None else min(len(source), max_items)
    if num_items == 0:
        raise ValueError(f"tfds {name!r} split {split!r} is empty")
    first = source[0]
    if not isinstance(first, dict) or "image" not in first:
        keys = sorted(first) if isinstance(first, dict) else type(first).__name__
        raise ValueError(f"tfds {name!r} has no 'image' feature (features: {keys})")
    return num_items, first


def _read_images(source, num_items, has_labels, name, image_size, grayscale, pixel_range):
    """The first `num_items` records, preprocessed `_TFDS_CHUNK` at a time.

    Returns:
        (items float32 [N, S, S, C], labels: a list of N ints, empty without labels).
    """
    items, labels = None, []
    for lo in range(0, num_items, _TFDS_CHUNK):
        # One record at a time: `source[i]` is the random-access read every tfds
        # data source (and its offline mock) supports.
        examples = [source[i] for i in range(lo, min(lo + _TFDS_CHUNK, num_items))]
        chunk = _preprocess_records(examples, image_size, grayscale, pixel_range)
        if items is None:
            items = np.empty((num_items,) + chunk.shape[1:], dtype=np.float32)
        items[lo : lo + len(chunk)] = chunk
        if has_labels:
            labels.extend(int(ex["label"]) for ex in examples)
        if (lo // _TFDS_CHUNK) % 50 == 49:
            logging.info("tfds %s: %d / %d images", name, lo + len(chunk), num_items)
    return items, labels


def _preprocess_records(examples, image_size, grayscale, pixel_range):
    """float32 [B, S, S, C] of the records' "image" features (`preprocess_images`)."""
    images = [np.asarray(ex["image"]) for ex in examples]
    if len({im.shape for im in images}) == 1:
        return preprocess_images(np.stack(images), image_size, grayscale, pixel_range)
    # Data sets with images of varying sizes: one at a time.
    return np.concatenate(
        [preprocess_images(im[None], image_size, grayscale, pixel_range) for im in images]
    )
