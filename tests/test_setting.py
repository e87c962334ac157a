"""Tests for diffusion_bias.setting: what differs between images and tokens, in one place."""

import ast
import os

import numpy as np
import pytest

import diffusion_bias
from diffusion_bias import setting as setting_lib


def test_of_gives_each_kind_and_refuses_any_other():
    assert setting_lib.of("images").kind == "images"
    assert setting_lib.of("tokens").kind == "tokens"
    for bad in ("image", None, ["tokens"]):
        with pytest.raises(ValueError, match="kind must be one of"):
            setting_lib.of(bad)


def test_tokens_encode_one_hot_and_decode_back_by_argmax():
    tokens = setting_lib.of("tokens")
    items = np.random.default_rng(0).integers(0, 6, (5, 16)).astype(np.int32)
    encoded = np.asarray(tokens.encode(items, 6))
    assert encoded.shape == (5, 16, 6) and np.all(encoded.sum(-1) == 1)
    decoded = np.asarray(tokens.decode(encoded))
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, items)
    assert tokens.sample_shape((16,), 6) == (16, 6)
    images = setting_lib.of("images")
    x = np.ones((2, 4, 4, 1), np.float32)
    assert images.encode(x) is x and images.decode(x) is x and images.denoiser_output(x) is x
    assert images.sample_shape((4, 4, 1)) == (4, 4, 1)


def test_losses_agree_with_their_definitions_item_by_item():
    rng = np.random.default_rng(1)
    tokens = setting_lib.of("tokens")
    labels = rng.integers(0, 4, (3, 8)).astype(np.int32)
    logits = rng.normal(size=(3, 8, 4)).astype(np.float32)
    probs = np.asarray(tokens.denoiser_output(logits))
    clean = np.asarray(tokens.encode(labels, 4))
    # Cross-entropy by hand: -log p(label) per token, its mean over the sequence.
    by_hand = np.array(
        [np.mean([-np.log(probs[b, i, labels[b, i]]) for i in range(8)]) for b in range(3)]
    )
    np.testing.assert_allclose(tokens.item_loss(probs, clean, None), by_hand, rtol=1e-5)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_token = -np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(tokens.training_loss(logits, labels, None), per_token, rtol=1e-5)
    images = setting_lib.of("images")
    out, noise = rng.normal(size=(2, 3, 3, 1)), rng.normal(size=(2, 3, 3, 1))
    np.testing.assert_allclose(
        images.item_loss(out, None, noise), ((out - noise) ** 2).mean((1, 2, 3))
    )
    np.testing.assert_allclose(images.training_loss(out, None, noise), (out - noise) ** 2)


def test_the_bias_onset_is_the_similarity_peak_or_the_divergence_minimum():
    images, tokens = setting_lib.of("images"), setting_lib.of("tokens")
    assert (images.bias_statistic, images.bias_direction) == ("similarity", "max")
    assert (tokens.bias_statistic, tokens.bias_direction) == ("nn_divergence", "min")
    # The similarity histograms cover each similarity's range: cosine and overlap.
    assert images.histogram_bins()[[0, -1]].tolist() == [-1.0, 1.0]
    assert tokens.histogram_bins()[[0, -1]].tolist() == [0.0, 1.0]


def test_pool_items_of_the_wrong_rank_or_dtype_are_refused():
    setting_lib.of("tokens").check_pool_items(np.zeros((3, 16), np.int32))
    with pytest.raises(ValueError, match=r"token items must be int32 \[N, L\]"):
        setting_lib.of("tokens").check_pool_items(np.zeros((3, 16), np.int64))
    with pytest.raises(ValueError, match=r"image items must be float32 \[N, H, W, C\]"):
        setting_lib.of("images").check_pool_items(np.zeros((3, 8, 8), np.float32))


def _kind_comparisons(tree):
    """Comparisons of anything with "images" or "tokens" (==, !=, in)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            containers = [o.elts for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set))]
            constants = operands + [e for elts in containers for e in elts]
            if any(isinstance(o, ast.Constant) and o.value in setting_lib.KINDS for o in constants):
                found.append(node.lineno)
    return found


def test_no_module_but_setting_compares_a_kind():
    package = os.path.dirname(diffusion_bias.__file__)
    offenders = {}
    for folder, _, names in os.walk(package):
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith(".py") and path != setting_lib.__file__:
                with open(path) as f:
                    lines = _kind_comparisons(ast.parse(f.read()))
                if lines:
                    offenders[os.path.relpath(path, package)] = lines
    assert not offenders, offenders
    # The check finds what it looks for.
    assert _kind_comparisons(ast.parse("x = 1 if run.kind == 'tokens' else 2")) == [1]
    assert _kind_comparisons(ast.parse("y = stats['setting'] != 'images'")) == [1]
    assert _kind_comparisons(ast.parse("z = s in ('images', 'x')")) == [1]
