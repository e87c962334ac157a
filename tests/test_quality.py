"""Sample quality: real digits are recognised confidently, noise and blends are not."""

import numpy as np

from diffusion_bias.data import images
from diffusion_bias.statistics import quality


def test_real_digits_score_higher_than_noise_and_blends():
    pool = images.digits_pool()
    items, labels = pool.items, pool.labels
    classifier = quality.fit_classifier(items[:300], labels[:300])
    real = quality.classifier_confidence(classifier, items[300:600])
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, items[:300].shape).astype(np.float32)
    blends = 0.5 * (items[300:600] + items[600:900])  # two digits superposed
    assert real.mean() > 0.75
    assert quality.classifier_confidence(classifier, noise).mean() < real.mean() - 0.2
    assert quality.classifier_confidence(classifier, blends).mean() < real.mean() - 0.15
    assert real.shape == (300,) and np.all((real > 0) & (real <= 1))
