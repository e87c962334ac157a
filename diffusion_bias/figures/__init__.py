"""The paper's figures, drawn from a statistics dict alone (see `summary.STATISTICS_SCHEMA`).

Figures compute nothing beyond reshaping, so they can be redrawn from
`analysis/statistics.json` without touching a model:

    stats = json.load(open("workdirs/digits/analysis/statistics.json"))
    figures.draw_all(stats, "workdirs/digits/analysis")

Every figure is a function `(stats, path) -> None` writing one PNG. Entries may
be None or NaN (a statistic that could not be computed at a snapshot): they are
skipped, never interpolated. Matplotlib's object API (`Figure`, no pyplot) is
used so that drawing needs no GUI backend and leaves pyplot's global state alone.

`draw_all` is the entry point. The figures live by setting: `figures/bias.py`
(both settings), `figures/images.py`, `figures/tokens.py`, and the membership
audit in `figures/privacy.py`; what they share
(reading the dict, axes, curves) in `figures/common.py`.
"""

from collections.abc import Callable
import os
from typing import Any

from absl import logging

from diffusion_bias.figures import common
from diffusion_bias.figures.bias import fig_bias_vs_test_loss
from diffusion_bias.figures.bias import fig_nearest
from diffusion_bias.figures.bias import fig_same_split
from diffusion_bias.figures.bias import fig_similarity_histograms
from diffusion_bias.figures.common import spans_decades
from diffusion_bias.figures.images import fig_examples
from diffusion_bias.figures.images import fig_score_cosine
from diffusion_bias.figures.privacy import fig_privacy
from diffusion_bias.figures.tokens import fig_kl_along_t
from diffusion_bias.figures.tokens import fig_loss_decomposition
from diffusion_bias.figures.tokens import fig_nn_histograms
from diffusion_bias.figures.tokens import fig_sequential_learning
from diffusion_bias.figures.tokens import fig_uturn
from diffusion_bias.figures.tokens import fig_uturn_random

# (figure, keys it needs besides "checkpoints"); a tuple of keys means "any of them".
FIGURES = (
    (fig_bias_vs_test_loss, ("test_loss", ("sample_split.mean", "nn_divergence"))),
    (fig_similarity_histograms, ("sample_split.hist", "sample_split.edges")),
    (fig_score_cosine, ("score_cosine.t",)),
    (fig_nearest, ("nearest",)),
    (fig_same_split, ("same_split.similarity",)),
    (fig_privacy, ("privacy.epsilon", "privacy.tpr")),
    (fig_nn_histograms, ("nn_hist.generated",)),
    (fig_sequential_learning, ("kl_bp.values",)),
    (fig_kl_along_t, ("kl_bp_along_t.values",)),
    (fig_loss_decomposition, ("loss_decomposition",)),
    (fig_uturn, ("uturn.ratios",)),
    (fig_uturn_random, ("uturn_random.ratios",)),
    (fig_examples, ("examples.samples", "examples.nearest")),
)


def _supported(stats, needs):
    if not stats.get("checkpoints"):
        return False
    for need in needs:
        options = need if isinstance(need, tuple) else (need,)
        if all(common.get(stats, key) is None for key in options):
            return False
    return True


def available(stats: dict[str, Any]) -> list[Callable[[dict[str, Any], str], None]]:
    """The figure functions the dict has the keys for."""
    return [fn for fn, needs in FIGURES if _supported(stats, needs)]


def draw_all(stats: dict[str, Any], out_dir: str, strict: bool = False) -> list[str]:
    """Draws every figure `stats` supports into `out_dir` as `<function name>.png`.

    Args:
        stats: the statistics dict (see `summary.STATISTICS_SCHEMA`).
        out_dir: folder for the PNGs (created).
        strict: raise when a figure fails; by default the failure is logged and
            the other figures are still drawn (the statistics are already saved,
            so a broken figure should not cost the rest).

    Returns:
        The paths of the PNGs written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for fn in available(stats):
        path = os.path.join(out_dir, f"{fn.__name__}.png")
        try:
            fn(stats, path)
        except Exception:
            if strict:
                raise
            logging.exception("Figure %s failed; drawing the others.", fn.__name__)
            continue
        paths.append(path)
    return paths
