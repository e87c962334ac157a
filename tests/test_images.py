"""Image pools: the digits, tfds through its mock, and the preprocessing."""

import sys
import types

import numpy as np
import pytest
from sklearn import datasets as sk_datasets

from diffusion_bias.data import images as images_lib


def test_digits_pool():
    pool = images_lib.digits_pool()
    assert pool.kind == "images"
    assert pool.items.shape == (1797, 8, 8, 1) and pool.items.dtype == np.float32
    assert pool.items.min() == -1.0 and pool.items.max() == 1.0
    # x / 8 - 1 of the integer values 0..16: a grid of step 1/8.
    np.testing.assert_array_equal(pool.items * 8, np.round(pool.items * 8))
    assert pool.labels.shape == (1797,) and set(pool.labels.tolist()) == set(range(10))
    assert pool.info["num_items"] == 1797


def test_unit_pixel_range_is_value_over_max():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 5, 5, 1), dtype=np.uint8)
    unit = images_lib.preprocess_images(images, 5, grayscale=False, pixel_range="unit")
    np.testing.assert_allclose(unit, images / 255.0, rtol=1e-6)
    symmetric = images_lib.preprocess_images(images, 5, grayscale=False)
    np.testing.assert_allclose(symmetric, images / 127.5 - 1.0, rtol=1e-6, atol=1e-6)
    digits = sk_datasets.load_digits().images
    np.testing.assert_allclose(images_lib.digits_pool("unit").items[..., 0], digits / 16.0)
    np.testing.assert_array_equal(images_lib.digits_pool().items[..., 0], digits / 8.0 - 1.0)
    with pytest.raises(ValueError, match="pixel_range"):
        images_lib.digits_pool("0-255")


def test_preprocess_maps_pure_red_to_its_luma():
    red = np.zeros((2, 218, 178, 3), dtype=np.uint8)
    red[..., 0] = 255
    grey = images_lib.preprocess_images(red, image_size=32, grayscale=True)
    assert grey.shape == (2, 32, 32, 1) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, 2 * 0.299 - 1, atol=1e-5)  # luma 0.299 of 1
    colour = images_lib.preprocess_images(red, image_size=32, grayscale=False)
    assert colour.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(colour[..., 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(colour[..., 1:], -1.0, atol=1e-5)


def test_preprocess_centre_crops_before_resizing():
    # A 6x4 image whose top and bottom rows are white: the centred 4x4 square
    # drops them and is all black.
    image = np.zeros((1, 6, 4, 1), dtype=np.uint8)
    image[:, 0] = image[:, -1] = 255
    out = images_lib.preprocess_images(image, image_size=4, grayscale=True)
    np.testing.assert_array_equal(out, -1.0)
    # Same size: no resampling, just the scaling of 0..255 to [-1, 1].
    ramp = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 17
    np.testing.assert_allclose(
        images_lib.preprocess_images(ramp, 4, True), ramp / 127.5 - 1, atol=1e-6
    )


@pytest.mark.parametrize("in_size, out_size", [(178, 32), (28, 32), (32, 16), (7, 3)])
def test_resize_matrix_is_jax_antialiased_linear_resize(in_size, out_size):
    jax = pytest.importorskip("jax")
    image = np.random.default_rng(0).uniform(size=(in_size, in_size)).astype(np.float32)
    weights = images_lib.resize_matrix(in_size, out_size)
    expected = jax.image.resize(image, (out_size, out_size), "linear", antialias=True)
    np.testing.assert_allclose(weights @ image @ weights.T, expected, atol=1e-5)
    assert weights.min() >= 0
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)


def test_preprocess_does_not_depend_on_the_batch():
    images = np.random.default_rng(1).integers(0, 256, size=(9, 40, 30, 3), dtype=np.uint8)
    batch = images_lib.preprocess_images(images, 16, grayscale=True)
    for i in (0, 8):
        np.testing.assert_array_equal(
            images_lib.preprocess_images(images[i : i + 1], 16, True), batch[i : i + 1]
        )


def _mock_images(tfds, name, num_examples):
    """The raw images the tfds mock serves for `name`, uint8 [N, H, W, C]."""
    with tfds.testing.mock_data(num_examples=num_examples):
        source = tfds.data_source(name, split="train")
        return np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])


@pytest.mark.parametrize("name, raw_shape", [("mnist", (28, 28, 1)), ("celeb_a", (218, 178, 3))])
def test_tfds_pool_on_mock_data(name, raw_shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    raw = _mock_images(tfds, name, num_examples=6)
    assert raw.shape == (6,) + raw_shape
    with tfds.testing.mock_data(num_examples=6):
        pool = images_lib.tfds_pool(name, split="train", image_size=32, grayscale=True)
        limited = images_lib.tfds_pool(name, image_size=32, grayscale=True, max_items=4)
    assert pool.kind == "images" and pool.items.dtype == np.float32
    assert pool.items.shape == (6, 32, 32, 1)
    assert pool.items.min() >= -1.0 and pool.items.max() <= 1.0
    np.testing.assert_allclose(pool.items, images_lib.preprocess_images(raw, 32, True))
    np.testing.assert_array_equal(limited.items, pool.items[:4])
    assert pool.info["dataset"] == name and pool.info["num_items"] == 6
    assert pool.info["source_image_shape"] == list(raw_shape)
    assert (pool.labels is not None) == (name == "mnist")


def test_tfds_pool_chunks_like_one_batch(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(images_lib, "_TFDS_CHUNK", 3)
    raw = _mock_images(tfds, "cifar10", num_examples=7)
    with tfds.testing.mock_data(num_examples=7):
        pool = images_lib.tfds_pool("cifar10", image_size=16, grayscale=False)
    assert pool.items.shape == (7, 16, 16, 3)
    np.testing.assert_allclose(pool.items, images_lib.preprocess_images(raw, 16, False))


def _fake_tfds(monkeypatch, records):
    """A stand-in tensorflow_datasets whose every data source serves `records` (a list)."""
    fake = types.ModuleType("tensorflow_datasets")
    fake.data_source = lambda name, split, data_dir: records
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)


def test_tfds_pool_reads_in_chunks_records_of_varying_sizes_with_their_labels(monkeypatch):
    # Runs without tensorflow-datasets: the source is a list of records, as
    # `tfds.data_source` serves them (random access, numpy out).
    rng = np.random.default_rng(3)
    shapes = [(20, 12, 3)] * 4 + [(15, 18, 3)] + [(20, 12, 3)] * 2  # chunk 2 of 3 varies
    records = [
        {"image": rng.integers(0, 256, size=shape, dtype=np.uint8), "label": np.int64(i % 3)}
        for i, shape in enumerate(shapes)
    ]
    _fake_tfds(monkeypatch, records)
    monkeypatch.setattr(images_lib, "_TFDS_CHUNK", 3)
    pool = images_lib.tfds_pool("fake", image_size=8, grayscale=False, pixel_range="unit")
    expected = np.concatenate(
        [images_lib.preprocess_images(r["image"][None], 8, False, "unit") for r in records]
    )
    np.testing.assert_array_equal(pool.items, expected)
    assert pool.labels.dtype == np.int64 and pool.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert pool.info["num_items"] == 7 and pool.info["source_image_shape"] == [20, 12, 3]
    limited = images_lib.tfds_pool("fake", image_size=8, grayscale=False, max_items=5)
    assert limited.items.shape == (5, 8, 8, 3) and limited.labels.tolist() == [0, 1, 2, 0, 1]


def test_tfds_pool_refuses_an_empty_split_and_records_without_images(monkeypatch):
    _fake_tfds(monkeypatch, [])
    with pytest.raises(ValueError, match="'fake' split 'test' is empty"):
        images_lib.tfds_pool("fake", split="test")
    _fake_tfds(monkeypatch, [{"pixels": np.zeros((2, 2, 1), np.uint8)}])
    with pytest.raises(ValueError, match=r"no 'image' feature \(features: \['pixels'\]\)"):
        images_lib.tfds_pool("fake")
    with pytest.raises(ValueError, match="image_size"):
        images_lib.tfds_pool("fake", image_size=0)


def test_tfds_pool_without_tfds_says_how_to_install(monkeypatch):
    # None in sys.modules makes `import tensorflow_datasets` raise ImportError.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tfds\]'"):
        images_lib.tfds_pool("mnist")
