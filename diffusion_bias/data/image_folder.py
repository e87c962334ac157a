"""A folder of image files as the paper's authors read CelebA, cached on disk.

The authors' CelebA (their Utils/loader.py and preprocess_celeba.py, in
davide-beltrame/Why-Diffusion-Models-Don-t-Memorize) lists the folder
`img_align_celeba/` in natural order (000001.jpg, ..., 202599.jpg) and maps each
file through torchvision's ToTensor, Resize(32), CenterCrop(32), Grayscale(1):

- RGB in [0, 1] (a grey file is first converted to RGB, as their loader does);
- the short side resized to S, the long side to int(S * long / short), with
  antialiased bilinear interpolation (`images.resize_matrix`, the kernel of
  torch's `interpolate(..., antialias=True)`); CelebA's 218x178 becomes 39x32;
- a centred S x S crop, its corner at round((H - S) / 2) (torchvision's rounding);
- grey as torchvision's tensor Grayscale: 0.2989 R + 0.587 G + 0.114 B.

The order of the files is the pool's order, so `splits.assignment="contiguous"`
gives the authors' splits. Decoding 202,599 JPEGs takes minutes; with a cache
directory the pool is stored once, under a hash of the file names, their sizes
and the transform, and read back by the next run.
"""

from concurrent import futures
import hashlib
import json
import os
import re

from absl import logging
import numpy as np
import numpy.typing as npt

from diffusion_bias import checks
from diffusion_bias import files
from diffusion_bias.data import images
from diffusion_bias.data import pool as pool_lib

# The extensions the authors' loader accepts (compared in lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# torchvision's `rgb_to_grayscale` on tensors (R, G, B); PIL's "L" uses 0.299.
GREY_WEIGHTS = np.array([0.2989, 0.587, 0.114], dtype=np.float32)

# Bump when the transform changes the items of a folder: hashed into the cache name.
_CACHE_VERSION = 1

_LOG_EVERY = 10_000


def natural_key(name: str) -> tuple:
    """Sort key ordering digit runs by value: "img2" before "img10" (natsort's order)."""
    parts = re.split(r"(\d+)", name)
    # Even positions are text, odd ones digits: the tuples compare type with type.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def image_files(path: str) -> list[str]:
    """The image file names of a folder, in natural order.

    Raises:
        ValueError: `path` is not a folder, or holds no .jpg, .jpeg or .png file.
    """
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path!r} is not a directory")
    names = [n for n in os.listdir(path) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    if not names:
        raise ValueError(f"image folder {path!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
    return sorted(names, key=natural_key)


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') with the short side `size` and the long one int(size * long / short)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def crop_corner(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision's centred size x size crop: round((H - size) / 2)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def to_square(image: npt.ArrayLike, size: int, grayscale: bool) -> np.ndarray:
    """One RGB image, uint8 [H, W, 3], through the authors' transform.

    Returns:
        float32 [size, size, 1] (grey) or [size, size, 3], in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"to_square needs uint8 [H, W, 3] images, got {image.dtype} {image.shape}")
    height, width, _ = image.shape
    new_h, new_w = short_side_shape(height, width, size)
    x = np.moveaxis(image.astype(np.float32) / 255.0, -1, 0)  # [3, H, W]
    # Separable resampling, rows then columns; the identity is skipped so that an
    # image already of the size is not touched.
    if new_h != height:
        x = images.resize_matrix(height, new_h) @ x
    if new_w != width:
        x = x @ images.resize_matrix(width, new_w).T
    top, left = crop_corner(new_h, new_w, size)
    x = np.moveaxis(x[:, top : top + size, left : left + size], 0, -1)  # [S, S, 3]
    if grayscale:
        x = (x @ GREY_WEIGHTS)[..., None]
    return x.astype(np.float32)


def _read_image(path: str, size: int, grayscale: bool) -> np.ndarray:
    # Imported here: Pillow is needed by this source only (matplotlib installs it).
    from PIL import Image  # pylint: disable=import-outside-toplevel

    with Image.open(path) as image:
        return to_square(np.asarray(image.convert("RGB")), size, grayscale)


def _folder_params(path, names, image_size, grayscale, pixel_range):
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{os.path.getsize(os.path.join(path, name))}\n".encode())
    return {
        "files": digest.hexdigest(),
        "num_items": len(names),
        "image_size": int(image_size),
        "grayscale": bool(grayscale),
        "pixel_range": str(pixel_range),
        "version": _CACHE_VERSION,
    }


def _read_cache(cache_path, params):
    """The cached items, or None when the file is absent or not these params'."""
    if not os.path.exists(cache_path):
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as data:
            stored = json.loads(str(data["params"]))
            items = np.asarray(data["items"])
        channels = 1 if params["grayscale"] else 3
        shape = (params["num_items"], params["image_size"], params["image_size"], channels)
        if stored != params or items.dtype != np.float32 or items.shape != shape:
            raise ValueError(f"holds {stored} {items.dtype} {items.shape}, not {params}")
    except Exception as e:  # pylint: disable=broad-except
        # Only a cache: an unreadable or mismatched file means decoding again.
        logging.warning("image folder: cache %s is unusable (%s); decoding", cache_path, e)
        return None
    logging.info("image folder: read %s", cache_path)
    return items


def folder_pool(
    path: str,
    image_size: int = 32,
    grayscale: bool = True,
    pixel_range: str = "unit",
    max_items: int | None = None,
    cache_dir: str | None = None,
) -> pool_lib.Pool:
    """The images of a folder, in natural file order, as the authors' CelebA.

    Args:
        path: the folder (CelebA: `img_align_celeba/`).
        image_size: side S of the square images.
        grayscale: one grey channel (torchvision's weights), or RGB.
        pixel_range: "unit" ([0, 1], ToTensor, the authors') or "symmetric" ([-1, 1]).
        max_items: the first `max_items` files only; None for all.
        cache_dir: where the decoded pool is stored and read back; None decodes.

    Returns:
        Pool of kind "images": items float32 [N, S, S, C] in file order.
    """
    images.check_pixel_range(pixel_range)
    if not (checks.is_int(image_size) and image_size >= 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    names = image_files(path)
    if max_items is not None:
        if not (checks.is_int(max_items) and max_items >= 1):
            raise ValueError(f"max_items must be a positive integer or None, got {max_items!r}")
        names = names[:max_items]
    params = _folder_params(path, names, image_size, grayscale, pixel_range)
    cache_path = None
    items = None
    if cache_dir:
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        cache_path = os.path.join(os.fspath(cache_dir), f"image_folder_{key}.npz")
        items = _read_cache(cache_path, params)
    if items is None:
        items = _decode(path, names, image_size, grayscale)
        if pixel_range == "symmetric":
            items = (2.0 * items - 1.0).astype(np.float32)
        if cache_path is not None:
            os.makedirs(os.path.dirname(cache_path), exist_ok=True)
            with files.atomic_write(cache_path, "wb") as f:
                np.savez(f, items=items, params=np.array(json.dumps(params, sort_keys=True)))
    info = {
        "name": "image_folder",
        "path": os.path.abspath(path),
        "first_file": names[0],
        "last_file": names[-1],
        "pixel_range": pixel_range,
        "num_items": int(items.shape[0]),
        "image_shape": list(items.shape[1:]),
    }
    return pool_lib.Pool(items=items, kind="images", info=info)


def _decode(path, names, image_size, grayscale) -> np.ndarray:
    """Every file through `to_square`, decoded by a thread pool (PIL and numpy
    release the GIL), in the order of `names`: float32 [N, S, S, C]."""
    out = np.empty((len(names), image_size, image_size, 1 if grayscale else 3), np.float32)
    paths = [os.path.join(path, name) for name in names]
    with futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = pool.map(lambda p: _read_image(p, image_size, grayscale), paths)
        for i, image in enumerate(results):
            out[i] = image
            if (i + 1) % _LOG_EVERY == 0:
                logging.info("image folder %s: %d / %d images", path, i + 1, len(names))
    return out
