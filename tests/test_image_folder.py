"""Tests for diffusion_bias.data.image_folder: the authors' CelebA files and transform."""

import os

import numpy as np
from PIL import Image
import pytest

from configs import smoke
from diffusion_bias.config import config_checks
from diffusion_bias.data import image_folder
from diffusion_bias.data import sources


def _authors_transform(image, size):
    """ToTensor, Resize(size), CenterCrop(size), Grayscale(1) as torchvision computes
    them on a tensor, written pixel by pixel: the antialiased bilinear weights of
    torch's `_upsample_bilinear2d_aa` (PIL's reduction), the short side to `size`, the
    crop at round((H - size) / 2), the grey weights 0.2989, 0.587, 0.114."""
    x = image.astype(np.float64) / 255.0  # [H, W, 3]
    height, width = x.shape[:2]
    if width <= height:
        new_h, new_w = int(size * height / width), size
    else:
        new_h, new_w = size, int(size * width / height)

    def weights(in_size, out_size):
        scale = in_size / out_size
        support = max(scale, 1.0)  # the bilinear filter's support 1, widened to downsample
        rows = []
        for i in range(out_size):
            centre = (i + 0.5) * scale
            lo = max(int(centre - support + 0.5), 0)
            hi = min(int(centre + support + 0.5), in_size)
            row = np.zeros(in_size)
            for j in range(lo, hi):
                row[j] = max(0.0, 1.0 - abs((j - centre + 0.5) / support))
            rows.append(row / row.sum())
        return np.array(rows)

    x = np.einsum("ih,hwc->iwc", weights(height, new_h), x)
    x = np.einsum("jw,iwc->ijc", weights(width, new_w), x)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[top : top + size, left : left + size]
    return 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]  # [S, S]


@pytest.mark.parametrize("shape", [(218, 178), (178, 218), (40, 40), (33, 65), (20, 24)])
def test_to_square_is_the_authors_torchvision_transform(shape):
    image = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    ours = image_folder.to_square(image, 32, grayscale=True)
    assert ours.shape == (32, 32, 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[..., 0], _authors_transform(image, 32), atol=2e-6)


def test_celeba_files_resize_to_39_by_32_and_crop_at_row_4():
    assert image_folder.short_side_shape(218, 178, 32) == (39, 32)
    assert image_folder.crop_corner(39, 32, 32) == (4, 0)  # round(3.5) = 4, as torchvision


def test_files_are_listed_in_natural_order_with_the_authors_extensions(tmp_path):
    for name in ["img10.png", "img2.JPG", "img1.jpeg", "notes.txt", "img02b.png"]:
        (tmp_path / name).write_bytes(b"")
    assert image_folder.image_files(str(tmp_path)) == [
        "img1.jpeg", "img2.JPG", "img02b.png", "img10.png",
    ]  # fmt: skip
    # CelebA's zero-padded names: natural order is their order as text.
    names = [f"{i:06d}.jpg" for i in (10, 2, 202599, 1)]
    assert sorted(names, key=image_folder.natural_key) == sorted(names)


def _write_folder(path, count, rng, size=(21, 17)):
    arrays = []
    for i in range(count):
        array = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        if i == 1:  # a grey file: the authors' loader converts it to RGB first
            array = np.repeat(array[..., :1], 3, axis=-1)
            Image.fromarray(array[..., 0], mode="L").save(path / f"{i + 1:06d}.png")
        else:
            Image.fromarray(array).save(path / f"{i + 1:06d}.png")
        arrays.append(array)
    return arrays


def test_folder_pool_holds_every_file_in_order_and_caches_it(tmp_path, monkeypatch):
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    arrays = _write_folder(folder, 12, np.random.default_rng(1))
    cache = tmp_path / "cache"
    pool = image_folder.folder_pool(str(folder), image_size=8, cache_dir=str(cache))
    assert pool.kind == "images" and pool.items.shape == (12, 8, 8, 1)
    for array, item in zip(arrays, pool.items):
        np.testing.assert_array_equal(item, image_folder.to_square(array, 8, True))
    assert pool.info["first_file"] == "000001.png" and pool.info["last_file"] == "000012.png"
    # Read back without decoding.
    monkeypatch.setattr(image_folder, "_decode", lambda *a: pytest.fail("decoded again"))
    again = image_folder.folder_pool(str(folder), image_size=8, cache_dir=str(cache))
    np.testing.assert_array_equal(again.items, pool.items)
    monkeypatch.undo()
    # A file that changes is decoded again; "symmetric" is 2x - 1; max_items the first files.
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(folder / "000003.png")
    changed = image_folder.folder_pool(
        str(folder), image_size=8, pixel_range="symmetric", max_items=5, cache_dir=str(cache)
    )
    assert changed.items.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(changed.items[2], -np.ones((8, 8, 1), np.float32))
    np.testing.assert_allclose(changed.items[[0, 1, 3, 4]], 2 * pool.items[[0, 1, 3, 4]] - 1)
    assert len(os.listdir(cache)) == 2


def test_the_authors_celeba_split_is_contiguous_blocks_of_the_folder(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    _write_folder(folder, 30, np.random.default_rng(2), size=(9, 9))
    config = {"name": "image_folder", "path": str(folder), "image_size": 9}
    pool = sources.load_pool(config, cache_dir=str(tmp_path / "w"))
    data = sources.make_twin_data(pool, 3, 6, 4, seed=0, assignment="contiguous")
    np.testing.assert_array_equal(data.train.reshape(18, 9, 9, 1), pool.items[:18])
    np.testing.assert_array_equal(data.heldout, pool.items[-4:])


def test_config_errors_name_the_missing_or_empty_folder(tmp_path):
    config = smoke.get_config()
    with config.unlocked():
        config.data = dict(name="image_folder", path="")
    with pytest.raises(config_checks.ConfigError, match="config.data.path must name"):
        config_checks.check_config(config)
    config.data.path = str(tmp_path)
    with pytest.raises(config_checks.ConfigError, match="holds no .jpg/.jpeg/.png"):
        config_checks.check_config(config)
    config.data.path = str(tmp_path / "absent")
    with pytest.raises(config_checks.ConfigError, match="is not a directory"):
        config_checks.check_config(config)
    _write_folder(tmp_path, 3, np.random.default_rng(3))
    config.data.path = str(tmp_path)
    assert config_checks.data_pool_size(config.data) == 3
