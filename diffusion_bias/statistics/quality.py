"""Sample quality that needs no download: does a classifier of real items recognise the samples?

A stopping rule trades privacy against quality (the paper (arXiv 2603.03469): early snapshots are
less biased, and less finished). For images with class labels (the digits),
quality is the mean confidence (largest class probability) of a multinomial
logistic regression fitted on the held-out items: never on the twins'
training sets, so a copy of a training item earns nothing a new digit would
not. For tokens, the grammatical share of the samples plays this part
(`controlled.grammatical_fraction`).
"""

from typing import Any

import numpy as np


def fit_classifier(items: np.ndarray, labels: np.ndarray) -> Any:
    """A classifier of real items, e.g. the held-out digits and their labels.

    Args:
        items: [m, ...] real items (images).
        labels: [m] int class labels.

    Returns:
        A fitted scikit-learn classifier of flattened items.
    """
    # On raw pixels: standardised features made the classifier as confident on
    # uniform noise (0.97) as on real digits; raw, noise scores 0.48 against 0.82.
    # Imported here: scikit-learn takes a second to import, and only image runs fit this.
    from sklearn import linear_model

    classifier = linear_model.LogisticRegression(max_iter=3000)
    return classifier.fit(items.reshape(len(items), -1), labels)


def classifier_confidence(classifier: Any, samples: np.ndarray) -> np.ndarray:
    """[N] the classifier's largest class probability for each sample."""
    return classifier.predict_proba(samples.reshape(len(samples), -1)).max(axis=1)
