"""TensorBoard event files of a smoke run hold what metrics.jsonl and statistics.json hold."""

import glob
import json
import os
import struct
import time

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from configs import smoke
from diffusion_bias import metric_writers
from diffusion_bias import run as run_lib
from diffusion_bias.instrument import analysis
from diffusion_bias.training import train


def _event_scalars(logdir):
    """{tag: {step: value}} and the plugin names of the event files in `logdir`.

    A step written twice for one tag fails the test. An event file is a TFRecord stream: uint64 length, uint32 CRC of the length,
    the serialised Event, uint32 CRC of the data.
    """
    scalars, plugins = {}, set()
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                plugins.add(value.metadata.plugin_data.plugin_name)
                if value.HasField("simple_value"):
                    by_step = scalars.setdefault(value.tag, {})
                    assert event.step not in by_step, (value.tag, event.step)
                    by_step[event.step] = value.simple_value
    return scalars, plugins


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("smoke_board"))
    train.train_and_evaluate(smoke.get_config(), workdir)
    return workdir


def test_training_events_equal_metrics_jsonl(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    events, plugins = _event_scalars(os.path.join(workdir, "tensorboard", "train"))
    assert set(events) == {
        "learning_rate",
        "steps_per_sec",
        "train_loss/twin_0",
        "train_loss/twin_1",
    }
    assert all(r["learning_rate"] == smoke.get_config().optimizer.learning_rate for r in rows)
    # By epoch, as the monitor's and the analysis' curves.
    spe = run_lib.steps_per_epoch(smoke.get_config())
    for tag, by_epoch in events.items():
        assert sorted(by_epoch) == [r["step"] // spe for r in rows]
        for r in rows:
            want = r["train_loss"][int(tag[-1])] if tag.startswith("train_loss") else r[tag]
            np.testing.assert_allclose(by_epoch[r["step"] // spe], want, rtol=1e-6)
    # The config is recorded as hyper-parameters and as text.
    assert {"hparams", "text"} <= plugins


def test_analysis_events_equal_statistics_json_and_a_rerun_rewrites_them(workdir):
    analysis.analyze(workdir)
    time.sleep(1.1)  # event files are named by the second: the rerun gets a new one
    stats = analysis.analyze(workdir)  # the rerun reads the cache and rewrites the events
    with open(os.path.join(workdir, "analysis", "statistics.json")) as f:
        assert json.load(f) == json.loads(json.dumps(stats))
    events, _ = _event_scalars(os.path.join(workdir, "tensorboard", "analysis"))
    epochs = [int(round(e)) for e in stats["checkpoints"]]
    curves = {
        "sample_split_similarity": stats["sample_split"]["mean"],
        "test_loss": stats["test_loss"],
        "train_loss": stats["train_loss"],
        "membership_auc": stats["membership_auc"],
        "memorized_fraction": stats["nearest"]["memorized_fraction"],
        "privacy/epsilon_lower_bound": stats["privacy"]["epsilon"],
    }
    for name in stats["privacy"]["scores"]:
        curves[f"privacy/auc/{name}"] = stats["privacy"]["auc"][name]
        for j, fpr in enumerate(stats["privacy"]["fprs"]):
            tpr = [row[j] for row in stats["privacy"]["tpr"][name]]
            curves[f"privacy/tpr_at_fpr_{fpr:g}/{name}"] = tpr
    metrics = metric_writers.verdict_metrics(stats)
    assert {"verdict/conclusive", "verdict/test_loss_min_epoch"} <= set(metrics)
    assert set(events) == set(curves) | set(metrics)
    for tag, value in metrics.items():
        assert events[tag] == {0: pytest.approx(value)}
    for tag, values in curves.items():
        assert sorted(events[tag]) == epochs  # one value per snapshot, not one per run
        np.testing.assert_allclose([events[tag][e] for e in epochs], values, rtol=1e-6)


def test_token_statistics_give_nn_divergence_and_every_kl_bp(tmp_path):
    stats = dict(
        checkpoints=[10.0, 20.0],
        sample_split=dict(mean=[0.5, 0.6]),
        test_loss=[2.0, 1.5],
        train_loss=[1.9, 1.2],
        membership_auc=[0.5, None],
        nearest=dict(memorized_fraction=[0.0, 0.25]),
        nn_divergence=[0.3, 0.1],
        kl_bp=dict(k=[0, 1, 2], values=[[3.0, 2.0, 1.0], [1.5, 0.5, 0.25]]),
    )
    events, _ = _event_scalars(metric_writers.write_analysis(stats, str(tmp_path)))
    assert events["kl_bp/BP_1"] == {10: 2.0, 20: 0.5}
    assert events["nn_divergence"] == pytest.approx({10: 0.3, 20: 0.1})
    assert events["membership_auc"] == {10: 0.5}  # None: not written
    assert events["memorized_fraction"] == {10: 0.0, 20: 0.25}
