"""The transformer's "torch" initialisation follows torch's rules; "flax" is unchanged."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion_bias import models

Q, L, H, HEADS, LAYERS, TIME = 6, 16, 64, 4, 3, 32


def _params(param_init=None, seed=0):
    kwargs = {} if param_init is None else dict(param_init=param_init)
    model = models.TokenTransformer(
        num_symbols=Q, length=L, width=H, num_layers=LAYERS, num_heads=HEADS, **kwargs
    )
    x = jnp.zeros((2, L, Q))
    params = model.init(jax.random.key(seed), x, jnp.ones((2,), jnp.int32), train=False)
    return jax.tree.map(np.asarray, params["params"])


def _assert_uniform(values, bound):
    """Values look like U(-bound, bound): inside the bounds, near them, std bound/sqrt(3).

    The std tolerance is 4 standard errors of a uniform sample's std
    (sqrt((kurtosis - 1) / 4n), kurtosis 9/5).
    """
    values = np.asarray(values, np.float64).ravel()
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert values.std() > 0
    if values.size >= 30:  # P(all |x| < 0.8 bound) = 0.8^n
        assert np.abs(values).max() > 0.8 * bound
    tol = 4 * np.sqrt(0.8 / (4 * values.size))
    np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=tol)


# (module, fan_in) of every nn.Linear of the authors' model outside attention.
_LINEARS = [("embed_tokens", Q), ("embed_time", TIME), ("output", H)]
_LAYER_LINEARS = [("ff_in", H), ("ff_out", 2 * H)]


def test_torch_init_follows_torch_default_rules():
    p = _params("torch")
    pos = p["pos_embedding"]  # nn.Embedding: N(0, 1)
    np.testing.assert_allclose(pos.std(), 1.0, rtol=0.08)
    assert abs(pos.mean()) < 0.1
    for name, fan_in in _LINEARS:  # kaiming-uniform a=sqrt(5): U(+-1/sqrt(fan_in)), bias too
        _assert_uniform(p[name]["kernel"], 1 / np.sqrt(fan_in))
        _assert_uniform(p[name]["bias"], 1 / np.sqrt(fan_in))
    for i in range(LAYERS):
        layer = p[f"layer_{i}"]
        for name, fan_in in _LAYER_LINEARS:
            _assert_uniform(layer[name]["kernel"], 1 / np.sqrt(fan_in))
            _assert_uniform(layer[name]["bias"], 1 / np.sqrt(fan_in))
        att = layer["attention"]
        # The packed in-projection [3H, H]: xavier-uniform, bound sqrt(6 / (H + 3H)).
        packed = np.concatenate([att[n]["kernel"].reshape(H, H) for n in ("query", "key", "value")])
        _assert_uniform(packed, np.sqrt(6 / (4 * H)))
        for n in ("query", "key", "value", "out"):
            np.testing.assert_array_equal(att[n]["bias"], 0.0)
        # The output projection is an nn.Linear(H, H) kernel.
        _assert_uniform(att["out"]["kernel"], 1 / np.sqrt(H))
        assert not np.array_equal(att["query"]["kernel"], att["key"]["kernel"])
        for norm in ("norm_attention", "norm_ff"):
            np.testing.assert_array_equal(layer[norm]["scale"], 1.0)
            np.testing.assert_array_equal(layer[norm]["bias"], 0.0)


def test_torch_init_starts_every_encoder_layer_from_the_same_parameters():
    p = _params("torch")
    for i in range(1, LAYERS):
        jax.tree.map(np.testing.assert_array_equal, p["layer_0"], p[f"layer_{i}"])
    other = _params("torch", seed=1)
    assert not np.array_equal(other["layer_0"]["ff_in"]["kernel"], p["layer_0"]["ff_in"]["kernel"])
    assert not np.array_equal(other["pos_embedding"], p["pos_embedding"])


def test_flax_init_is_the_default_and_keeps_flax_rules():
    default, flax_ = _params(), _params("flax")
    jax.tree.map(np.testing.assert_array_equal, default, flax_)
    np.testing.assert_allclose(default["pos_embedding"].std(), 0.02, rtol=0.08)
    for name, fan_in in _LINEARS:
        np.testing.assert_array_equal(default[name]["bias"], 0.0)
        # lecun-normal (truncated): std 1/sqrt(fan_in), unbounded by the uniform's bound.
        np.testing.assert_allclose(default[name]["kernel"].std(), 1 / np.sqrt(fan_in), rtol=0.15)
    assert not np.array_equal(
        default["layer_0"]["ff_in"]["kernel"], default["layer_1"]["ff_in"]["kernel"]
    )
    # The two initialisations share the parameter tree: checkpoints and code are the same.
    assert jax.tree.structure(default) == jax.tree.structure(_params("torch"))


def test_torch_init_trains_through_get_model_and_rejects_unknown_names():
    config = ml_collections.ConfigDict(
        dict(name="transformer", num_symbols=Q, length=L, width=16, num_layers=2, num_heads=2)
    )
    with config.unlocked():
        config.param_init = "torch"
    model = models.get_model(config)
    assert model.param_init == "torch"
    x = jax.nn.one_hot(jnp.zeros((2, L), jnp.int32), Q)
    params = model.init(jax.random.key(0), x, jnp.ones((2,), jnp.int32), train=False)
    out = model.apply(
        params, x, jnp.ones((2,), jnp.int32), train=True, rngs={"dropout": jax.random.key(1)}
    )
    assert out.shape == (2, L, Q) and np.isfinite(np.asarray(out)).all()
    bad = models.TokenTransformer(Q, L, 16, 1, 2, param_init="jax")
    with pytest.raises(ValueError, match="param_init"):
        bad.init(jax.random.key(0), x, jnp.ones((2,), jnp.int32), train=False)
