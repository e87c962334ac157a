"""Tests for diffusion_bias.models: shapes, parameter counts, dropout, time, vmap."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion_bias import models

Q, L = 6, 16

# Tiny configurations: every test compiles in well under a second on a CPU.
TINY = {
    "transformer": (models.TokenTransformer(num_symbols=Q, length=L, width=16,
                                            num_layers=2, num_heads=2), (3, L, Q)),
    "unet": (models.UNet(base_channels=8, num_res_blocks=1), (3, 8, 8, 1)),
    "mlp": (models.MLPDenoiser(width=32, depth=2, dropout_rate=0.1), (3, 8, 8, 1)),
}


def _init(model, shape, seed=0):
    x = jnp.zeros(shape)
    t = jnp.zeros(shape[:1], jnp.int32)
    return model.init(jax.random.key(seed), x, t, False)


def _perturb(params, seed):
    # Zero-initialised pieces (U-Net conv_out, biases) would hide the dependence
    # on t or on dropout; random offsets make every path count.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


def _inputs(shape, seed=1):
    kx, kt = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, shape), jax.random.randint(kt, shape[:1], 1, 500)


def _num_params(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _abstract_params(model, shape):
    return jax.eval_shape(lambda: _init(model, shape))["params"]


# --- sinusoidal embedding ------------------------------------------------------

def test_sinusoidal_embedding_values():
    emb = models.sinusoidal_embedding(jnp.array([0, 3]), 8)
    assert emb.shape == (2, 8) and emb.dtype == jnp.float32
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1])
    freqs = 10000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(models.sinusoidal_embedding(jnp.array([3.0]), 8)[0], emb[1])


@pytest.mark.parametrize("dim", [7, 0, -2])
def test_sinusoidal_embedding_rejects_bad_dim(dim):
    with pytest.raises(ValueError, match="even"):
        models.sinusoidal_embedding(jnp.arange(3), dim)


def test_sinusoidal_embedding_rejects_bad_t():
    with pytest.raises(ValueError, match=r"\[B\]"):
        models.sinusoidal_embedding(jnp.zeros((2, 3)), 8)


# --- shapes ----------------------------------------------------------------------

@pytest.mark.parametrize("model,shape", [
    TINY["transformer"],
    (models.UNet(base_channels=8, num_res_blocks=1), (2, 8, 8, 1)),
    (models.UNet(base_channels=8, num_res_blocks=1), (2, 32, 32, 1)),
    (models.MLPDenoiser(width=32, depth=2), (2, 8, 8, 1)),
    (models.MLPDenoiser(width=32, depth=2), (2, 32, 32, 1)),
], ids=["transformer", "unet8", "unet32", "mlp8", "mlp32"])
def test_output_shape(model, shape):
    params = _init(model, shape)
    x, t = _inputs(shape)
    out = model.apply(params, x, t, False)
    assert out.shape == shape and out.dtype == jnp.float32
    # A scalar t is broadcast to the batch.
    np.testing.assert_allclose(model.apply(params, x, jnp.full(shape[:1], 7), False),
                               model.apply(params, x, 7, False), rtol=1e-6, atol=1e-6)


def test_transformer_rejects_wrong_shape():
    model, shape = TINY["transformer"]
    with pytest.raises(ValueError, match="x_t of shape"):
        _init(model, (3, L, Q + 1))


def test_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible by 4"):
        _init(models.UNet(base_channels=8, num_res_blocks=1), (1, 6, 6, 1))


# --- parameter counts ------------------------------------------------------------

def test_paper_transformer_parameter_count():
    h, layers, heads = 512, 8, 4
    model = models.TokenTransformer(num_symbols=Q, length=L, width=h,
                                    num_layers=layers, num_heads=heads)
    embeddings = (Q * h + h) + L * h + (32 * h + h)  # tokens, positions, time
    attention = 4 * (h * h + h)  # q, k, v, out projections with biases
    norms = 2 * 2 * h  # two LayerNorms, scale and bias
    feed_forward = (h * 2 * h + 2 * h) + (2 * h * h + h)
    output = h * Q + Q
    expected = embeddings + layers * (attention + norms + feed_forward) + output
    assert expected == 16_854_022
    assert _num_params(_abstract_params(model, (1, L, Q))) == expected


def _unet_count(base, mults, num_res_blocks, attention_levels, in_channels):
    """Parameter count of models.UNet, walked layer by layer from its layout."""
    gn = lambda c: 2 * c
    conv3 = lambda ci, co: 9 * ci * co + co
    dense = lambda ci, co: ci * co + co
    temb = 4 * base

    def res(ci, co):
        return (gn(ci) + conv3(ci, co) + dense(temb, co) + gn(co) + conv3(co, co)
                + (dense(ci, co) if ci != co else 0))

    def attn(c):
        return gn(c) + 4 * (c * c + c)

    total = dense(base, temb) + dense(temb, temb) + conv3(in_channels, base)
    c, skips = base, [base]
    for level, mult in enumerate(mults):
        for _ in range(num_res_blocks):
            total += res(c, base * mult) + (attn(base * mult) if level in attention_levels else 0)
            c = base * mult
            skips.append(c)
        if level != len(mults) - 1:
            total += conv3(c, c)
            skips.append(c)
    total += 2 * res(c, c) + (attn(c) if len(mults) - 1 in attention_levels else 0)
    for level in reversed(range(len(mults))):
        for _ in range(num_res_blocks + 1):
            total += res(c + skips.pop(), base * mults[level])
            c = base * mults[level]
            total += attn(c) if level in attention_levels else 0
        if level != 0:
            total += conv3(c, c)
    return total + gn(c) + conv3(c, in_channels)


def test_paper_unet_parameter_count():
    # Base 32, mults (1, 2, 4), 2 ResBlocks, attention at levels 1 and 2: 4,023,233
    # parameters, most of them in the level-2 (128-channel) ResBlocks. The count
    # does not depend on the image size (convolutions and attention share weights).
    model = models.UNet()
    count = _num_params(_abstract_params(model, (1, 32, 32, 1)))
    assert count == _unet_count(32, (1, 2, 4), 2, (1, 2), 1) == 4_023_233
    assert _num_params(_abstract_params(model, (1, 8, 8, 1))) == count


def test_unet_attention_only_at_lower_resolutions():
    names = list(_abstract_params(models.UNet(), (1, 32, 32, 1)))
    attn = [n for n in names if "attn" in n]
    assert sorted(attn) == sorted(
        [f"down_{lvl}_attn_{i}" for lvl in (1, 2) for i in range(2)]
        + [f"up_{lvl}_attn_{i}" for lvl in (1, 2) for i in range(3)] + ["mid_attn"])
    assert any(n.startswith("down_0_res") for n in names)  # level 0 exists, no attention
    no_attn = _abstract_params(models.UNet(base_channels=8, attention_levels=()), (1, 8, 8, 1))
    assert not [n for n in no_attn if "attn" in n]


def test_mlp_parameter_count():
    # input 64*256+256, time 64*256+256, 3 x (LN 2*256 + 256*256+256), LN 2*256,
    # output 256*64+64.
    w, d, f = 256, 3, 64
    expected = (f * w + w) + (64 * w + w) + d * (2 * w + w * w + w) + 2 * w + (w * f + f)
    assert expected == 249_152
    assert _num_params(_abstract_params(models.MLPDenoiser(), (1, 8, 8, 1))) == expected
    wide = _num_params(_abstract_params(models.MLPDenoiser(width=512), (1, 8, 8, 1)))
    assert wide == 891_456


# --- dropout, time, vmap ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TINY))
def test_dropout(name):
    model, shape = TINY[name]
    params = _perturb(_init(model, shape), seed=2)
    x, t = _inputs(shape)
    apply = jax.jit(model.apply, static_argnums=3)
    eval_a = apply(params, x, t, False, rngs={"dropout": jax.random.key(0)})
    eval_b = apply(params, x, t, False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(eval_a, eval_b)
    # Without rngs at all; eager and jitted results agree only to rounding.
    np.testing.assert_allclose(eval_a, model.apply(params, x, t, False), rtol=1e-5, atol=1e-5)
    train_a = apply(params, x, t, True, rngs={"dropout": jax.random.key(0)})
    train_b = apply(params, x, t, True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(train_a, apply(params, x, t, True,
                                                 rngs={"dropout": jax.random.key(0)}))
    assert float(jnp.max(jnp.abs(train_a - train_b))) > 1e-3
    assert float(jnp.max(jnp.abs(train_a - eval_a))) > 1e-3


@pytest.mark.parametrize("name", sorted(TINY))
def test_time_embedding_matters(name):
    model, shape = TINY[name]
    params = _perturb(_init(model, shape), seed=3)
    x, _ = _inputs(shape)
    b = shape[0]
    early = model.apply(params, x, jnp.full((b,), 10), False)
    late = model.apply(params, x, jnp.full((b,), 400), False)
    assert float(jnp.max(jnp.abs(early - late))) > 1e-3


@pytest.mark.parametrize("name", sorted(TINY))
def test_vmap_over_stacked_params(name):
    model, shape = TINY[name]
    p1 = _perturb(_init(model, shape, seed=0), seed=4)
    p2 = _perturb(_init(model, shape, seed=1), seed=5)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), p1, p2)
    x1, t = _inputs(shape, seed=6)
    x2, _ = _inputs(shape, seed=7)
    xs = jnp.stack([x1, x2])  # [2, B, ...]
    out = jax.vmap(lambda p, x: model.apply(p, x, t, False))(stacked, xs)
    np.testing.assert_allclose(out[0], model.apply(p1, x1, t, False), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[1], model.apply(p2, x2, t, False), rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3


# --- factory -----------------------------------------------------------------------

def test_get_model_builds_each_model():
    cfg = ml_collections.ConfigDict({"name": "transformer", "num_symbols": Q, "length": L,
                                     "width": 16, "num_layers": 2, "num_heads": 2})
    assert models.get_model(cfg) == models.TokenTransformer(Q, L, 16, 2, 2)
    unet = models.get_model(ml_collections.ConfigDict(
        {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "attention_levels": [1]}))
    assert unet == models.UNet(base_channels=8, channel_mults=(1, 2), attention_levels=(1,))
    assert models.get_model(ml_collections.ConfigDict({"name": "mlp"})) == models.MLPDenoiser()


def test_get_model_unknown_name():
    with pytest.raises(ValueError, match="mlp.*transformer.*unet"):
        models.get_model(ml_collections.ConfigDict({"name": "resnet"}))


def test_get_model_unknown_field():
    cfg = ml_collections.ConfigDict({"name": "mlp", "width": 64, "num_heads": 4})
    with pytest.raises(ValueError, match="num_heads"):
        models.get_model(cfg)
    # A linen Module's own fields are not hyper-parameters either.
    with pytest.raises(ValueError, match="parent"):
        models.get_model(ml_collections.ConfigDict({"name": "mlp", "parent": None}))
