"""The data of a run: the pool a config names, the twins' splits, centring."""

import inspect

import ml_collections
import numpy as np
import pytest

from diffusion_bias.data import grammar_pool
from diffusion_bias.data import image_folder
from diffusion_bias.data import images
from diffusion_bias.data import sources

# A small grammar pool: fast, and large enough for the twin-data tests.
_GRAMMAR = dict(q=6, depth=3, sigma=1.0, q_eff=4, grammar_seed=2, pool_size=500, pool_seed=5)


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


@pytest.mark.parametrize("drop_overlap", [False, True])
def test_make_twin_data_gathers_the_splits(drop_overlap):
    pool = grammar_pool.grammar_pool(**_GRAMMAR)
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
    pool = images.digits_pool()
    data = sources.make_twin_data(pool, 2, 100, 50, seed=0)
    assert data.train.shape == (2, 100, 8, 8, 1) and data.heldout.shape == (50, 8, 8, 1)
    np.testing.assert_array_equal(data.train[1], pool.items[data.splits.train[1]])


def test_load_pool_dispatches_on_name(tmp_path):
    config = ml_collections.ConfigDict({"name": "grammar", **_GRAMMAR, "cache_dir": str(tmp_path)})
    pool = sources.load_pool(config)
    np.testing.assert_array_equal(pool.items, grammar_pool.grammar_pool(**_GRAMMAR).items)
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


def test_fields_are_the_arguments_of_each_source():
    """`FIELDS` (the config check and load_pool) names each source function's arguments."""
    functions = {
        "grammar": grammar_pool.grammar_pool,
        "digits": images.digits_pool,
        "tfds": images.tfds_pool,
        "image_folder": image_folder.folder_pool,
    }
    for name, (required, optional) in sources.FIELDS.items():
        params = inspect.signature(functions[name]).parameters
        # The tfds data set is `config.data.dataset`: `name` names the source.
        fields = {"dataset" if p == "name" else p: param for p, param in params.items()}
        assert set(fields) == set(required) | set(optional)
        for field in required:
            assert fields[field].default is inspect.Parameter.empty
        for field in optional:
            assert fields[field].default is not inspect.Parameter.empty
