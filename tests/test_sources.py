"""Tests for diffusion_bias.data.sources: pools, caching, preprocessing, twin data."""

import os
import sys

import ml_collections
import numpy as np
import pytest

from diffusion_bias import grammar as grammar_lib
from diffusion_bias.data import sources

# A small grammar pool: fast, and large enough for the twin-data tests.
_GRAMMAR = dict(q=6, depth=3, sigma=1.0, q_eff=4, grammar_seed=2, pool_size=500, pool_seed=5)


# ---------------------------------------------------------------------------
# Grammar pool
# ---------------------------------------------------------------------------


def test_grammar_pool_equals_direct_sampling_and_is_deterministic():
    pool = sources.grammar_pool(**_GRAMMAR)
    grammar = grammar_lib.random_grammar(q=6, depth=3, sigma=1.0, q_eff=4, seed=2)
    np.testing.assert_array_equal(pool.items, grammar_lib.sample(grammar, 500, seed=5))
    np.testing.assert_array_equal(pool.grammar.transitions, grammar.transitions)
    assert pool.kind == "tokens" and pool.items.dtype == np.int32
    assert pool.items.shape == (500, 8) and len(pool) == 500
    assert pool.info["pool_seed"] == 5 and pool.info["cache_path"] is None
    np.testing.assert_array_equal(sources.grammar_pool(**_GRAMMAR).items, pool.items)
    other = sources.grammar_pool(**{**_GRAMMAR, "pool_seed": 6})
    assert not np.array_equal(other.items, pool.items)


def test_pool_items_are_read_only():
    pool = sources.grammar_pool(**_GRAMMAR)
    with pytest.raises(ValueError):
        pool.items[0, 0] = 1


def test_grammar_cache_round_trip_does_not_resample(tmp_path, monkeypatch):
    first = sources.grammar_pool(**_GRAMMAR, cache_dir=tmp_path)
    path = first.info["cache_path"]
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith("grammar_pool_") and path.endswith(".npz")
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp file left

    def no_sampling(*args, **kwargs):
        raise AssertionError("grammar.sample called although the pool is cached")

    monkeypatch.setattr(grammar_lib, "sample", no_sampling)
    mtime = os.stat(path).st_mtime_ns
    second = sources.grammar_pool(**_GRAMMAR, cache_dir=tmp_path)
    np.testing.assert_array_equal(second.items, first.items)
    assert second.items.dtype == np.int32
    assert os.stat(path).st_mtime_ns == mtime
    # Other parameters hash to another file, so they must sample.
    with pytest.raises(AssertionError, match="grammar.sample called"):
        sources.grammar_pool(**{**_GRAMMAR, "pool_seed": 6}, cache_dir=tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "wrong_items"])
def test_unusable_grammar_cache_is_regenerated(tmp_path, damage, caplog):
    expected = sources.grammar_pool(**_GRAMMAR).items
    path = sources.grammar_pool(**_GRAMMAR, cache_dir=tmp_path).info["cache_path"]
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"not an npz file")
    else:  # a readable file whose content does not match its parameters
        with np.load(path) as data:
            stored = dict(data)
        stored["items"] = stored["items"][:10]
        with open(path, "wb") as f:
            np.savez(f, **stored)
    with caplog.at_level("WARNING"):
        pool = sources.grammar_pool(**_GRAMMAR, cache_dir=tmp_path)
    np.testing.assert_array_equal(pool.items, expected)
    assert "regenerating" in caplog.text
    # The regenerated file is valid again: the next call reads it silently.
    caplog.clear()
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(
            sources.grammar_pool(**_GRAMMAR, cache_dir=tmp_path).items, expected
        )
    assert "regenerating" not in caplog.text


# ---------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------


def test_digits_pool():
    pool = sources.digits_pool()
    assert pool.kind == "images"
    assert pool.items.shape == (1797, 8, 8, 1) and pool.items.dtype == np.float32
    assert pool.items.min() == -1.0 and pool.items.max() == 1.0
    # x / 8 - 1 of the integer values 0..16: a grid of step 1/8.
    np.testing.assert_array_equal(pool.items * 8, np.round(pool.items * 8))
    assert pool.labels.shape == (1797,) and set(pool.labels.tolist()) == set(range(10))
    assert pool.info["num_items"] == 1797


# ---------------------------------------------------------------------------
# Image preprocessing and tfds
# ---------------------------------------------------------------------------


def test_preprocess_maps_pure_red_to_its_luma():
    red = np.zeros((2, 218, 178, 3), dtype=np.uint8)
    red[..., 0] = 255
    grey = sources.preprocess_images(red, image_size=32, grayscale=True)
    assert grey.shape == (2, 32, 32, 1) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, 2 * 0.299 - 1, atol=1e-5)  # luma 0.299 of 1
    colour = sources.preprocess_images(red, image_size=32, grayscale=False)
    assert colour.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(colour[..., 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(colour[..., 1:], -1.0, atol=1e-5)


def test_preprocess_centre_crops_before_resizing():
    # A 6x4 image whose top and bottom rows are white: the centred 4x4 square
    # drops them and is all black.
    image = np.zeros((1, 6, 4, 1), dtype=np.uint8)
    image[:, 0] = image[:, -1] = 255
    out = sources.preprocess_images(image, image_size=4, grayscale=True)
    np.testing.assert_array_equal(out, -1.0)
    # Same size: no resampling, just the scaling of 0..255 to [-1, 1].
    ramp = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 17
    np.testing.assert_allclose(
        sources.preprocess_images(ramp, 4, True), ramp / 127.5 - 1, atol=1e-6
    )


@pytest.mark.parametrize("in_size, out_size", [(178, 32), (28, 32), (32, 16), (7, 3)])
def test_resize_matrix_is_jax_antialiased_linear_resize(in_size, out_size):
    jax = pytest.importorskip("jax")
    image = np.random.default_rng(0).uniform(size=(in_size, in_size)).astype(np.float32)
    weights = sources.resize_matrix(in_size, out_size)
    expected = jax.image.resize(image, (out_size, out_size), "linear", antialias=True)
    np.testing.assert_allclose(weights @ image @ weights.T, expected, atol=1e-5)
    assert weights.min() >= 0
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)


def test_preprocess_does_not_depend_on_the_batch():
    images = np.random.default_rng(1).integers(0, 256, size=(9, 40, 30, 3), dtype=np.uint8)
    batch = sources.preprocess_images(images, 16, grayscale=True)
    for i in (0, 8):
        np.testing.assert_array_equal(
            sources.preprocess_images(images[i : i + 1], 16, True), batch[i : i + 1]
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
        pool = sources.tfds_pool(name, split="train", image_size=32, grayscale=True)
        limited = sources.tfds_pool(name, image_size=32, grayscale=True, max_items=4)
    assert pool.kind == "images" and pool.items.dtype == np.float32
    assert pool.items.shape == (6, 32, 32, 1)
    assert pool.items.min() >= -1.0 and pool.items.max() <= 1.0
    np.testing.assert_allclose(pool.items, sources.preprocess_images(raw, 32, True))
    np.testing.assert_array_equal(limited.items, pool.items[:4])
    assert pool.info["dataset"] == name and pool.info["num_items"] == 6
    assert pool.info["source_image_shape"] == list(raw_shape)
    assert (pool.labels is not None) == (name == "mnist")


def test_tfds_pool_chunks_like_one_batch(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "_TFDS_CHUNK", 3)
    raw = _mock_images(tfds, "cifar10", num_examples=7)
    with tfds.testing.mock_data(num_examples=7):
        pool = sources.tfds_pool("cifar10", image_size=16, grayscale=False)
    assert pool.items.shape == (7, 16, 16, 3)
    np.testing.assert_allclose(pool.items, sources.preprocess_images(raw, 16, False))


def test_tfds_pool_without_tfds_says_how_to_install(monkeypatch):
    # None in sys.modules makes `import tensorflow_datasets` raise ImportError.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tfds\]'"):
        sources.tfds_pool("mnist")


# ---------------------------------------------------------------------------
# Centering
# ---------------------------------------------------------------------------


def test_center_uses_the_training_mean_only():
    rng = np.random.default_rng(0)
    train = rng.normal(loc=[0.5, -0.2, 0.1], size=(2, 40, 4, 4, 3)).astype(np.float32)
    heldout = rng.normal(size=(10, 4, 4, 3)).astype(np.float32)
    (train_c, heldout_c), mean = sources.center(train, heldout)
    assert mean.shape == (3,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, train.mean(axis=(0, 1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(train_c.mean(axis=(0, 1, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_allclose(heldout_c, heldout - mean, atol=1e-6)
    assert train_c.dtype == heldout_c.dtype == np.float32
    assert train[0, 0, 0, 0, 0] != train_c[0, 0, 0, 0, 0]  # inputs are untouched
    (only,), _ = sources.center(train)
    np.testing.assert_array_equal(only, train_c)
    with pytest.raises(ValueError, match="channels"):
        sources.center(train, heldout[..., :1])
    with pytest.raises(ValueError, match="floating"):
        sources.center(np.zeros((4, 2), dtype=np.int32))


# ---------------------------------------------------------------------------
# Twin data and dispatch
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("drop_overlap", [False, True])
def test_make_twin_data_gathers_the_splits(drop_overlap):
    pool = sources.grammar_pool(**_GRAMMAR)
    data = sources.make_twin_data(
        pool, num_splits=3, split_size=40, heldout_size=30, seed=1, drop_overlap=drop_overlap
    )
    assert data.train.shape == (3, 40, 8) and data.heldout.shape == (30, 8)
    for k in range(3):
        np.testing.assert_array_equal(data.train[k], pool.items[data.splits.train[k]])
    np.testing.assert_array_equal(data.heldout, pool.items[data.splits.heldout])
    indices = np.concatenate([data.splits.train.ravel(), data.splits.heldout])
    assert len(np.unique(indices)) == len(indices)  # disjoint by index
    assert data.overlap.clean or not drop_overlap


def test_make_twin_data_on_images():
    pool = sources.digits_pool()
    data = sources.make_twin_data(pool, 2, 100, 50, seed=0)
    assert data.train.shape == (2, 100, 8, 8, 1) and data.heldout.shape == (50, 8, 8, 1)
    np.testing.assert_array_equal(data.train[1], pool.items[data.splits.train[1]])


def test_load_pool_dispatches_on_name(tmp_path):
    config = ml_collections.ConfigDict(
        {"name": "grammar", **_GRAMMAR, "cache_dir": str(tmp_path)}
    )
    pool = sources.load_pool(config)
    np.testing.assert_array_equal(pool.items, sources.grammar_pool(**_GRAMMAR).items)
    assert pool.info["cache_path"].startswith(str(tmp_path))
    # The argument is the fallback for a config without a cache directory.
    config.cache_dir = ""
    fallback = sources.load_pool(config, cache_dir=str(tmp_path / "run"))
    assert fallback.info["cache_path"].startswith(str(tmp_path / "run"))
    digits = sources.load_pool(
        ml_collections.ConfigDict({"name": "digits"}), cache_dir=str(tmp_path)
    )
    assert digits.items.shape == (1797, 8, 8, 1)
    # A field the source does not take is a mistake, not something to ignore.
    with pytest.raises(ValueError, match="unused"):
        sources.load_pool(ml_collections.ConfigDict({"name": "digits", "unused": 1}))


def test_load_pool_reads_the_tfds_fields():
    tfds = pytest.importorskip("tensorflow_datasets")
    config = ml_collections.ConfigDict(
        {"name": "tfds", "dataset": "mnist", "image_size": 8, "max_items": 3}
    )
    with tfds.testing.mock_data(num_examples=5):
        pool = sources.load_pool(config)
    assert pool.items.shape == (3, 8, 8, 1) and pool.info["dataset"] == "mnist"


def test_load_pool_errors():
    with pytest.raises(ValueError, match=r"'celeba'.*digits.*grammar.*tfds"):
        sources.load_pool(ml_collections.ConfigDict({"name": "celeba"}))
    with pytest.raises(ValueError, match="pool_size"):
        sources.load_pool(ml_collections.ConfigDict({"name": "grammar", "q": 6}))
