"""Tests for diffusion_bias.models: shapes, parameter counts, dropout, time, vmap."""

import functools

import flax.linen as nn
from flax.linen import dot_product_attention as flax_attention
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion_bias import models
from diffusion_bias.models import dropout as dropout_lib
from diffusion_bias.models import unet as unet_lib

Q, L = 6, 16

# Tiny configurations. XLA's CPU compile of threefry random bits is slow (tens of
# seconds for a U-Net's worth of initialisers), so tests draw parameters with numpy
# from `jax.eval_shape` of `model.init`, check shapes with `jax.eval_shape`, compile
# each model's apply once per train flag, and run `model.init` only where it is cheap.
TINY = {
    "transformer": (
        models.TokenTransformer(num_symbols=Q, length=L, width=16, num_layers=1, num_heads=2),
        (3, L, Q),
    ),
    # No down-path ResBlocks: every kind of block still runs (mid and up ResBlocks,
    # attention, down/upsampling, skip concatenation) at half the compile time.
    "unet": (
        models.UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=0, attention_levels=(1,)),
        (3, 8, 8, 1),
    ),
    "mlp": (models.MLPDenoiser(width=32, depth=2, dropout_rate=0.1), (3, 8, 8, 1)),
}


def _abstract_variables(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    t = jax.ShapeDtypeStruct(shape[:1], jnp.int32)
    return jax.eval_shape(lambda k, x, t: model.init(k, x, t, False), jax.random.key(0), x, t)


def _abstract_params(model, shape):
    return _abstract_variables(model, shape)["params"]


def _random_params(model, shape, seed):
    """Variables with init's structure and random entries, so no path is zeroed.

    Init zeroes the U-Net's conv_out and every bias, which would hide whether the
    output depends on t or on dropout.
    """
    rng = np.random.default_rng(seed)

    def draw(leaf):
        # Kernels ~ N(0, 1/fan_in) keep activations O(1); vectors ~ 1 + N(0, 0.3^2)
        # keep LayerNorm/GroupNorm scales away from zero and make biases non-zero.
        if leaf.ndim >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)
        return jnp.asarray(1.0 + 0.3 * rng.normal(size=leaf.shape), jnp.float32)

    return jax.tree.map(draw, _abstract_variables(model, shape))


def _inputs(shape, seed=1):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=shape), jnp.float32),
        jnp.asarray(rng.integers(1, 500, size=shape[:1]), jnp.int32),
    )


def _num_params(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _dropout_key(seed):
    # With jax_threefry_partitionable (the default), XLA:CPU takes seconds per
    # dropout site to compile threefry bits; "rbg" keys drive the same Dropout
    # code (make_rng("dropout")) and compile several times faster.
    return jax.random.key(seed, impl="rbg")


@functools.cache
def _apply_fn(name, train):
    """One jitted (params, x, t, dropout_key) -> output per tiny model and flag."""
    model, _ = TINY[name]
    return jax.jit(lambda p, x, t, key: model.apply(p, x, t, train, rngs={"dropout": key}))


# --- sinusoidal embedding ------------------------------------------------------


def test_sinusoidal_embedding_values():
    emb = models.sinusoidal_embedding(jnp.array([0, 3]), 8)
    assert emb.shape == (2, 8) and emb.dtype == jnp.float32
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1])
    freqs = 10000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(
        emb[1], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(models.sinusoidal_embedding(jnp.array([3.0]), 8)[0], emb[1])


@pytest.mark.parametrize("dim", [7, 0, -2])
def test_sinusoidal_embedding_rejects_bad_dim(dim):
    with pytest.raises(ValueError, match="even"):
        models.sinusoidal_embedding(jnp.arange(3), dim)


def test_sinusoidal_embedding_rejects_bad_t():
    with pytest.raises(ValueError, match=r"\[B\]"):
        models.sinusoidal_embedding(jnp.zeros((2, 3)), 8)


# --- shapes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,shape",
    [
        (
            models.TokenTransformer(num_symbols=Q, length=L, width=16, num_layers=2, num_heads=2),
            (2, L, Q),
        ),
        (models.UNet(base_channels=8, num_res_blocks=1), (2, 8, 8, 1)),
        (models.UNet(base_channels=8, num_res_blocks=1), (2, 32, 32, 1)),
        (models.MLPDenoiser(width=32, depth=2), (2, 8, 8, 1)),
        (models.MLPDenoiser(width=32, depth=2), (2, 32, 32, 1)),
    ],
    ids=["transformer", "unet8", "unet32", "mlp8", "mlp32"],
)
def test_output_shape(model, shape):
    variables = _abstract_variables(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    # t of shape [B] without dropout, a scalar t with dropout.
    for t, train in (
        (jax.ShapeDtypeStruct(shape[:1], jnp.int32), False),
        (jax.ShapeDtypeStruct((), jnp.int32), True),
    ):
        out = jax.eval_shape(
            lambda v, x, t: model.apply(v, x, t, train, rngs={"dropout": jax.random.key(0)}),
            variables,
            x,
            t,
        )
        assert out.shape == shape and out.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_finite(name):
    model, shape = TINY[name]
    x, t = _inputs(shape)
    out = _apply_fn(name, False)(_random_params(model, shape, seed=0), x, t, _dropout_key(0))
    assert out.shape == shape and bool(jnp.all(jnp.isfinite(out)))


def test_init_runs_and_twins_differ():
    # The engine's pattern: vmap init over K keys gives stacked twins. Only the MLP
    # runs it: the other models' inits are traced (eval_shape) by every test, and
    # compiling their threefry initialisers would dominate this file's runtime.
    model, shape = TINY["mlp"]
    x, t = _inputs(shape)
    stacked = jax.jit(jax.vmap(lambda k: model.init(k, x, t, False)))(
        jax.random.split(jax.random.key(0), 2)
    )
    expected = _abstract_variables(model, shape)
    assert jax.tree.structure(stacked) == jax.tree.structure(expected)
    for leaf, ref in zip(jax.tree.leaves(stacked), jax.tree.leaves(expected)):
        assert leaf.shape == (2,) + ref.shape
    # Random initialisers (kernels) differ between twins; biases
    # and norm parameters start at the same constants.
    random = [
        a
        for path, a in jax.tree_util.tree_leaves_with_path(stacked)
        if jax.tree_util.keystr(path[-1:]) == "['kernel']"
    ]
    assert random and all(not np.allclose(a[0], a[1]) for a in random)


def test_transformer_rejects_wrong_shape():
    model, _ = TINY["transformer"]
    with pytest.raises(ValueError, match="x_t of shape"):
        _abstract_variables(model, (3, L, Q + 1))


def test_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible by 4"):
        _abstract_variables(models.UNet(base_channels=8, num_res_blocks=1), (1, 6, 6, 1))


# --- parameter counts ------------------------------------------------------------


def test_paper_transformer_parameter_count():
    h, layers, heads = 512, 8, 4
    model = models.TokenTransformer(
        num_symbols=Q, length=L, width=h, num_layers=layers, num_heads=heads
    )
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
        return (
            gn(ci)
            + conv3(ci, co)
            + dense(temb, co)
            + gn(co)
            + conv3(co, co)
            + (dense(ci, co) if ci != co else 0)
        )

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


@functools.cache
def _paper_unet_params():
    return _abstract_params(models.UNet(), (1, 32, 32, 1))


def test_paper_unet_parameter_count():
    # Base 32, mults (1, 2, 4), 2 ResBlocks, attention at levels 1 and 2: 4,023,233
    # parameters, 2.58M of them in the 128-channel ResBlocks (level 2 and middle),
    # 0.48M in attention. Convolutions and attention share weights over pixels, so
    # the count is the same on 8x8 and 32x32 images.
    assert _num_params(_paper_unet_params()) == _unet_count(32, (1, 2, 4), 2, (1, 2), 1)
    assert _unet_count(32, (1, 2, 4), 2, (1, 2), 1) == 4_023_233


def test_unet_attention_only_at_lower_resolutions():
    names = list(_paper_unet_params())  # top-level modules
    attn = [n for n in names if "attn" in n]
    assert sorted(attn) == sorted(
        [f"down_{lvl}_attn_{i}" for lvl in (1, 2) for i in range(2)]
        + [f"up_{lvl}_attn_{i}" for lvl in (1, 2) for i in range(3)]
        + ["mid_attn"]
    )
    assert any(n.startswith("down_0_res") for n in names)  # level 0 exists, no attention
    no_attn = _abstract_params(models.UNet(base_channels=8, attention_levels=()), (1, 8, 8, 1))
    assert not [n for n in no_attn if "attn" in n]


def test_mlp_parameter_count():
    # Input Dense, time Dense (64 sinusoidal channels), per layer LN + Dense,
    # final LN, output Dense; about 0.25M for width 256 on 8x8x1.
    w, d, f, e = 256, 3, 64, 64
    expected = (f * w + w) + (e * w + w) + d * (2 * w + w * w + w) + 2 * w + (w * f + f)
    assert expected == 249_152
    assert _num_params(_abstract_params(models.MLPDenoiser(), (1, 8, 8, 1))) == expected
    wide = _num_params(_abstract_params(models.MLPDenoiser(width=512), (1, 8, 8, 1)))
    assert wide == 891_456


# --- dropout, time, vmap ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
def test_dropout(name):
    model, shape = TINY[name]
    params = _random_params(model, shape, seed=2)
    x, t = _inputs(shape)
    k0, k1 = _dropout_key(0), _dropout_key(1)
    evaluate, train = _apply_fn(name, False), _apply_fn(name, True)
    eval_out = evaluate(params, x, t, k0)
    np.testing.assert_array_equal(eval_out, evaluate(params, x, t, k1))
    train_0 = train(params, x, t, k0)
    np.testing.assert_array_equal(train_0, train(params, x, t, k0))
    assert float(jnp.max(jnp.abs(train_0 - train(params, x, t, k1)))) > 1e-3
    assert float(jnp.max(jnp.abs(train_0 - eval_out))) > 1e-3


def test_torch_attention_without_dropout_is_flax_attention_bit_for_bit():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, L, 4, 8))
    np.testing.assert_array_equal(
        models.transformer.torch_attention(q, k, v), flax_attention(q, k, v)
    )
    mask = jax.random.bernoulli(jax.random.key(3), 0.7, (2, 4, L, L)).at[..., 0].set(True)
    np.testing.assert_array_equal(
        models.transformer.torch_attention(q, k, v, mask=mask), flax_attention(q, k, v, mask=mask)
    )


def test_torch_attention_drops_each_weight_of_each_sequence_and_head_on_its_own():
    # Values one-hot in the key position: the output is the (dropped) weights themselves.
    batch, heads = 64, 4
    q, k = jax.random.normal(jax.random.key(1), (2, batch, L, heads, 8))
    v = jnp.broadcast_to(jnp.eye(L)[None, :, None, :], (batch, L, heads, L))
    weights = np.asarray(flax_attention(q, k, v))  # [B, L(q), heads, L(k)]
    out = np.asarray(
        models.transformer.torch_attention(
            q, k, v, dropout_rng=jax.random.key(2), dropout_rate=0.1, deterministic=False
        )
    )
    dropped = out == 0
    p = 6554 / 65536
    assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / dropped.size)
    np.testing.assert_allclose(out[~dropped], weights[~dropped] / (1 - p), rtol=1e-5)
    # flax's default would share one mask across batch and heads; torch's does not.
    assert np.mean(dropped[0] != dropped[1]) > 0.1
    assert np.mean(dropped[:, :, 0] != dropped[:, :, 1]) > 0.1


@pytest.mark.parametrize("name", sorted(TINY))
def test_time_embedding_matters(name):
    model, shape = TINY[name]
    params = _random_params(model, shape, seed=3)
    x, _ = _inputs(shape)
    evaluate, b = _apply_fn(name, False), shape[0]
    early = evaluate(params, x, jnp.full((b,), 10, jnp.int32), _dropout_key(0))
    late = evaluate(params, x, jnp.full((b,), 400, jnp.int32), _dropout_key(0))
    assert float(jnp.max(jnp.abs(early - late))) > 1e-3


@pytest.mark.parametrize("name", sorted(TINY))
def test_vmap_over_stacked_params(name):
    model, shape = TINY[name]
    p1, p2 = _random_params(model, shape, seed=4), _random_params(model, shape, seed=5)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), p1, p2)
    (x1, t), (x2, _) = _inputs(shape, seed=6), _inputs(shape, seed=7)
    xs = jnp.stack([x1, x2])  # [2, B, ...]
    out = jax.jit(jax.vmap(lambda p, x: model.apply(p, x, t, False)))(stacked, xs)
    evaluate = _apply_fn(name, False)
    np.testing.assert_allclose(out[0], evaluate(p1, x1, t, _dropout_key(0)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[1], evaluate(p2, x2, t, _dropout_key(0)), rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3


# --- factory -----------------------------------------------------------------------


def test_get_model_builds_each_model():
    cfg = ml_collections.ConfigDict(
        {
            "name": "transformer",
            "num_symbols": Q,
            "length": L,
            "width": 16,
            "num_layers": 2,
            "num_heads": 2,
        }
    )
    assert models.get_model(cfg) == models.TokenTransformer(Q, L, 16, 2, 2)
    unet = models.get_model(
        ml_collections.ConfigDict(
            {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "attention_levels": [1]}
        )
    )
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


# --- compute dtype -------------------------------------------------------------


def _matmul_input_dtypes(jaxpr):
    """The operand dtypes of every dot_general and convolution in `jaxpr`, nested ones too."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            found += [str(v.aval.dtype) for v in eqn.invars]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _matmul_input_dtypes(inner)
    return found


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_compute_runs_the_matmuls_in_bfloat16_on_float32_parameters(name):
    model, shape = TINY[name]
    half = model.clone(dtype="bfloat16")
    # The same float32 parameters: the optimizer and the EMA never see bfloat16.
    assert jax.tree.map(lambda a: (a.shape, a.dtype), _abstract_variables(half, shape)) == (
        jax.tree.map(lambda a: (a.shape, a.dtype), _abstract_variables(model, shape))
    )
    assert {str(a.dtype) for a in jax.tree.leaves(_abstract_variables(half, shape))} == {"float32"}
    variables, (x, t) = _random_params(model, shape, seed=0), _inputs(shape)
    apply = lambda m: lambda v, x, t: m.apply(v, x, t, False)  # noqa: E731
    matmuls = _matmul_input_dtypes(jax.make_jaxpr(apply(half))(variables, x, t).jaxpr)
    assert matmuls and set(matmuls) == {"bfloat16"}
    assert set(_matmul_input_dtypes(jax.make_jaxpr(apply(model))(variables, x, t).jaxpr)) == {
        "float32"
    }
    out, reference = (jax.jit(apply(m))(variables, x, t) for m in (half, model))
    assert out.dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa: a relative error of a few 1e-3 per
    # operation, a few percent through the layers.
    error = float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))
    assert 0 < error < 0.05


# The paper's CelebA U-Net as its authors built it (models/unet.py, layout "authors").


def test_authors_unet_keeps_the_parameter_count_with_four_heads():
    authors = models.UNet(layout="authors", param_init="torch")
    params = _abstract_params(authors, (1, 32, 32, 1))
    # Their trainable count (Unet.py, base 32, (1, 2, 4), attention (False, True, True)).
    assert _num_params(params) == 4_023_233
    query = params["down_1_attn_0"]["attention"]["query"]["kernel"]
    assert query.shape == (64, 4, 16)  # 4 heads of 16 channels at level 1


def test_authors_time_embedding_is_their_sinusoid_table_at_their_0_indexed_step():
    t = np.array([1, 2, 500, 1000])  # our steps; theirs count from 0
    half = 16
    w = np.exp(-np.arange(half) * np.log(10000.0) / (half - 1))  # w_15 = 1e-4 exactly
    args = (t - 1)[:, None] * w[None]
    want = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    got = unet_lib.time_embedding(jnp.asarray(t), 2 * half, "authors")
    np.testing.assert_allclose(got, want, atol=2e-4)  # float32 sin of arguments up to 999
    ddpm = np.exp(-np.arange(half) * np.log(10000.0) / half)
    np.testing.assert_allclose(
        unet_lib.time_embedding(jnp.asarray(t), 2 * half, "ddpm")[:, :half],
        np.sin(t[:, None] * ddpm[None]),
        atol=2e-4,
    )


def test_channel_dropout_zeroes_whole_feature_maps():
    x = jnp.ones((4, 8, 8, 64))
    layer = dropout_lib.Dropout(0.5, broadcast_dims=unet_lib.DROPOUT_BROADCAST["authors"])
    out = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    per_map = out.transpose(0, 3, 1, 2).reshape(4, 64, -1)  # [B, C, H*W]
    assert (per_map.min(-1) == per_map.max(-1)).all()  # each map kept or dropped whole
    kept = per_map[..., 0] > 0
    assert 0.3 < kept.mean() < 0.7 and np.allclose(per_map[kept], 2.0)


@pytest.mark.parametrize("layout,offset", [("authors", 0), ("ddpm", 1)])
def test_stride_2_downsample_reads_the_pixels_the_layout_pads_for(layout, offset):
    # A centred delta kernel copies the pixel each output is centred on.
    conv = nn.Conv(1, (3, 3), strides=(2, 2), use_bias=False,
                   padding=unet_lib.DOWNSAMPLE_PADDING[layout])  # fmt: skip
    kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)
    x = jnp.arange(64.0).reshape(1, 8, 8, 1)
    out = conv.apply({"params": {"kernel": kernel}}, x)[0, :, :, 0]
    # torch's Conv2d(stride 2, padding 1) reads pixel 2i; flax's "SAME" pads (0, 1): 2i + 1.
    np.testing.assert_array_equal(out, x[0, offset::2, offset::2, 0])


def test_torch_init_draws_every_weight_within_torchs_bounds_and_keeps_conv_out():
    model = models.UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_levels=(1,), layout="authors", param_init="torch")  # fmt: skip
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.ones((1,)), False)
    leaves = jax.tree_util.tree_flatten_with_path(params["params"])[0]
    seen = set()
    for path, value in leaves:
        names = [p.key for p in path]
        value = np.asarray(value)
        if "attention" in names:
            c = 16  # level 1
            if names[-2] == "out":
                bound = 0.0 if names[-1] == "bias" else 1 / np.sqrt(c)
            else:  # query, key, value: xavier over torch's [3C, C] in-projection
                bound = 0.0 if names[-1] == "bias" else np.sqrt(6 / (4 * c))
            seen.add("attention")
        else:
            layer = functools.reduce(lambda d, k: d[k], names[:-1], params["params"])
            if "kernel" not in layer:  # a GroupNorm: torch's ones and zeros, as flax
                np.testing.assert_array_equal(value, 1.0 if names[-1] == "scale" else 0.0)
                continue
            # Conv kernel [kh, kw, in, out]; Dense kernel [in, out]; a bias shares its bound.
            bound = 1 / np.sqrt(np.prod(np.shape(layer["kernel"])[:-1]))
            seen.add(names[-1])
        assert np.abs(value).max() <= bound + 1e-7, names
        if bound and value.size >= 256:
            # Uniform in +-bound: standard deviation bound / sqrt(3).
            np.testing.assert_allclose(
                value.std(), bound / np.sqrt(3), rtol=0.15, err_msg=str(names)
            )
    assert {"attention", "kernel", "bias"} <= seen
    assert np.abs(np.asarray(params["params"]["conv_out"]["kernel"])).max() > 0
