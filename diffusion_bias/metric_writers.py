"""TensorBoard event files of training and analysis, written without TensorFlow.

tensorboardX writes the event-file format TensorBoard reads, from numpy and
protobuf alone (CLU's default writer needs TensorFlow). A run's workdir holds

    tensorboard/train/     per twin train loss, learning rate, steps/s and the
                           monitor's statistics, and the config as
                           hyper-parameters and text
    tensorboard/analysis/  the per-snapshot statistics, rewritten by every
                           analysis, and the verdict and privacy numbers as
                           the hyper-parameters' metrics

The x axis of every scalar is the epoch (the training's: the epochs completed at
the log point), so training, monitor and analysis curves line up.

so that `tensorboard --logdir W` shows both. The JSON files (metrics.jsonl,
analysis/statistics.json) stay the record; these are views of them.
"""

from collections.abc import Mapping
from collections.abc import Sequence
import glob
import json
import os
from typing import Any

import numpy as np
import tensorboardX
from tensorboardX import summary as tbx_summary


def flat_hparams(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """{dotted name: value} of a nested config dict, for TensorBoard's HParams.

    Args:
        config: nested dict (e.g. `ConfigDict.to_dict()`).

    Returns:
        dict of bool, int, float or str; sequences and None become their str.
    """
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat_hparams(value).items()})
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


class Writer:
    """Scalars (and hyper-parameters) into the event files of one folder."""

    def __init__(self, logdir, fresh=False):
        """Opens `logdir`; `fresh` deletes its older event files first (a rewrite)."""
        if fresh:
            for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
                os.remove(path)
        self._writer = tensorboardX.SummaryWriter(logdir=logdir)

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes {tag: float} at integer `step`."""
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), int(step))

    def hparams(self, config: dict[str, Any], metrics: Mapping[str, float] | None = None) -> None:
        """Writes `config` (nested dict) as hyper-parameters and as JSON text.

        `metrics` ({tag: float}) are written as scalars too, at step 0, which is
        where TensorBoard's HParams view reads a metric. The HParams summaries go
        into this folder's own event file (tensorboardX's `add_hparams` would
        open a new folder per call).
        """
        metrics = metrics or {}
        for summary in tbx_summary.hparams(flat_hparams(config), metrics):
            self._writer.file_writer.add_summary(summary)
        self.scalars(0, metrics)
        text = json.dumps(config, indent=2, sort_keys=True)
        # Four leading spaces: TensorBoard's text plugin renders markdown.
        self._writer.add_text("config", "\n".join("    " + s for s in text.splitlines()))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def training_scalars(
    train_loss: np.ndarray | Sequence[float], learning_rate: float, steps_per_sec: float
) -> dict[str, float]:
    """{tag: value} of one training log point; `train_loss` is [K], one per twin."""
    out = {f"train_loss/twin_{k}": loss for k, loss in enumerate(train_loss)}
    out.update(learning_rate=learning_rate, steps_per_sec=steps_per_sec)
    return out


def analysis_scalars(stats: dict[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """The per-snapshot curves of a statistics dict, as [(epoch, {tag: value})].

    Args:
        stats: the dict of `analysis.analyze` (statistics.json).

    Returns:
        One (integer epoch, scalars) per snapshot; None values are left out.
    """
    curves = {
        "sample_split_similarity": stats["sample_split"]["mean"],
        "test_loss": stats["test_loss"],
        "train_loss": stats["train_loss"],
        "membership_auc": stats["membership_auc"],
        "memorized_fraction": stats["nearest"]["memorized_fraction"],
    }
    if "nn_divergence" in stats:
        curves["nn_divergence"] = stats["nn_divergence"]
    if "kl_bp" in stats:
        for j, k in enumerate(stats["kl_bp"]["k"]):
            curves[f"kl_bp/BP_{k}"] = [row[j] for row in stats["kl_bp"]["values"]]
    p = stats.get("privacy")
    if p:
        curves["privacy/epsilon_lower_bound"] = p["epsilon"]
        for name in p["scores"]:
            curves[f"privacy/auc/{name}"] = p["auc"][name]
            for j, fpr in enumerate(p["fprs"]):
                curves[f"privacy/tpr_at_fpr_{fpr:g}/{name}"] = [row[j] for row in p["tpr"][name]]
    return [
        (
            int(round(epoch)),
            {tag: values[i] for tag, values in curves.items() if values[i] is not None},
        )
        for i, epoch in enumerate(stats["checkpoints"])
    ]


def write_analysis(stats: dict[str, Any], workdir: str) -> str:
    """Rewrites workdir/tensorboard/analysis from a statistics dict; returns the folder."""
    logdir = os.path.join(workdir, "tensorboard", "analysis")
    writer = Writer(logdir, fresh=True)
    try:
        for epoch, scalars in analysis_scalars(stats):
            writer.scalars(epoch, scalars)
        writer.hparams(stats.get("protocol") or {}, verdict_metrics(stats))
    finally:
        writer.close()
    return logdir


def verdict_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """{tag: float} of the verdict and the privacy audit at the test-loss minimum.

    The HParams view compares runs by these; undefined ones are left out.
    """
    v = stats.get("verdict") or {}
    out = {
        "verdict/conclusive": float(bool(v.get("conclusive"))),
        "verdict/bias_onset_epoch": v.get("bias_onset_epoch"),
        "verdict/test_loss_min_epoch": v.get("test_loss_min_epoch"),
        "verdict/gap_epochs": v.get("gap_epochs"),
    }
    index, p = v.get("test_loss_min_index"), stats.get("privacy")
    if index is not None and p:
        out["verdict/epsilon_at_test_loss_min"] = p["epsilon"][index]
    return {k: float(x) for k, x in out.items() if x is not None}
