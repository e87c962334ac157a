"""The bias monitor: statistics that tell memorising twins from generalising ones, and resume."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffusion_bias import run as run_lib
from diffusion_bias.diffusion import denoisers
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import schedules
from diffusion_bias.instrument import monitor as monitor_lib
from diffusion_bias.statistics import privacy

SCHEDULE = schedules.image_schedule(50)
SHAPE = (4, 4, 1)


def _data(seed=0, n=24, m=24):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((2 * n + m,) + SHAPE).astype(np.float32)
    return items[: 2 * n].reshape((2, n) + SHAPE), items[2 * n :]


def _memorizing_eps(train_x0, x_t, t):
    """Predicted noise of a model that has memorised `train_x0` (exact for that set)."""
    x0 = denoisers.memorizing_denoiser(train_x0, SCHEDULE, x_t, t)
    return process.predict_eps_from_x0(SCHEDULE, x_t, t, x0)


def _monitor(train, heldout, **kwargs):
    settings = dict(num_samples=32, sampling_steps=10, loss_items=24, loss_repeats=2, bootstrap=50)
    settings.update(kwargs)
    return monitor_lib.BiasMonitor(_memorizing_eps, SCHEDULE, train, heldout, "images", **settings)


def test_memorising_twins_are_flagged_by_every_statistic():
    train, heldout = _data()
    # Each twin's "parameters" are its own training set: it generates copies of it.
    row = _monitor(train, heldout)(jnp.asarray(train), epoch=1)
    assert row["memorized_fraction"] > 0.9
    assert row["closer_to_own"] > 0.9
    assert row["membership_auc"] > 0.8
    assert row["train_loss"] < row["test_loss"]
    assert row["decision"] == "continue"


def test_twins_sharing_one_distribution_are_not_flagged():
    train, heldout = _data()
    common = np.concatenate([train[0], train[1], heldout])  # both twins, one model
    params = jnp.stack([common, common])
    row = _monitor(train, heldout)(params, epoch=1)
    assert row["similarity"] > 0.999  # identical models: identical coupled samples
    assert 0.3 < row["closer_to_own"] < 0.7
    assert abs(row["membership_auc"] - 0.5) < 0.2


def test_privacy_budget_stops_and_stays_stopped_keeping_the_last_good_snapshot():
    train, heldout = _data()
    common = jnp.asarray(np.concatenate([train[0], train[1], heldout]))
    good, leaky = jnp.stack([common, common]), jnp.asarray(train)
    mon = _monitor(
        train, heldout, stop="privacy_budget", auc_threshold=0.7, memorized_threshold=1.0
    )
    assert mon(good, epoch=10)["decision"] == "continue"
    row = mon(leaky, epoch=20)
    assert row["decision"] == "stop" and row["kept_epoch"] == 10.0 and row["kept_index"] == 0
    assert mon(good, epoch=30)["decision"] == "stop"
    assert mon.kept_epoch == 10.0 and mon.kept_index == 0


def test_an_epsilon_budget_alone_stops_the_monitor_and_equals_the_audit_of_its_losses():
    train, heldout = _data()
    common = jnp.asarray(np.concatenate([train[0], train[1], heldout]))
    good, leaky = jnp.stack([common, common]), jnp.asarray(train)
    mon = _monitor(
        train,
        heldout,
        stop="privacy_budget",
        auc_threshold=1.0,
        memorized_threshold=1.0,
        epsilon_threshold=0.5,
    )
    first = mon(good, epoch=10)
    assert first["decision"] == "continue" and first["epsilon"] <= 0.5
    row = mon(leaky, epoch=20)
    assert row["decision"] == "stop" and row["kept_epoch"] == 10.0
    assert "epsilon lower bound" in row["reason"] and row["epsilon"] > 0.5
    # The bound is the loss attack's: own items in, the partner twin's items out.
    stats = mon.statistics(leaky)
    assert (stats["partner_losses"] > stats["train_losses"]).all()  # memorised: own items only
    expected, _ = privacy.epsilon_lower_bound(
        -stats["train_losses"], -stats["partner_losses"], confidence=0.95, delta=1e-5
    )
    assert row["epsilon"] == pytest.approx(expected)


def test_rows_are_reproducible_and_a_restored_monitor_continues_identically():
    train, heldout = _data()
    common = jnp.asarray(np.concatenate([train[0], train[1], heldout]))
    snapshots = [jnp.stack([common, common]), jnp.stack([common, common[::-1]]), train]
    mon = _monitor(
        train, heldout, stop="privacy_budget", auc_threshold=0.7, memorized_threshold=1.0
    )
    rows = [mon(p, epoch=e) for e, p in zip((1, 2, 3), snapshots)]
    # A restart after the second snapshot: state up to epoch 2, then the third again.
    resumed = _monitor(
        train, heldout, stop="privacy_budget", auc_threshold=0.7, memorized_threshold=1.0
    )
    resumed.load_state_dict(mon.state_dict(), upto_epoch=2)
    assert resumed.rows == rows[:2]
    assert resumed(snapshots[2], epoch=3) == rows[2]


def test_tokens_monitor_reports_nn_divergence_of_copies_as_far_from_held_out():
    q, length = 3, 8
    rng = np.random.default_rng(0)
    train = rng.integers(0, q, (2, 16, length)).astype(np.int32)
    heldout = rng.integers(0, q, (16, length)).astype(np.int32)
    schedule = schedules.token_schedule(40)

    def memorizing_probs(x0_onehot, x_t, t):
        return denoisers.memorizing_denoiser(x0_onehot, schedule, x_t, t)

    mon = monitor_lib.BiasMonitor(
        memorizing_probs,
        schedule,
        train,
        heldout,
        "tokens",
        num_symbols=q,
        num_samples=64,
        sampling_steps=40,
        bootstrap=20,
    )
    row = mon(jax.nn.one_hot(train, q), epoch=1)
    # Copies sit at distance 0 from their own set; held-out sequences mostly do not.
    assert row["memorized_fraction"] > 0.9  # a copy: d1 = 0 < d2 / 3
    assert row["nn_divergence"] > 0.5


def test_bad_arguments_are_refused_with_the_argument_named():
    train, heldout = _data()
    with pytest.raises(ValueError, match="kind"):
        monitor_lib.BiasMonitor(_memorizing_eps, SCHEDULE, train, heldout, "audio")
    with pytest.raises(ValueError, match="stop"):
        _monitor(train, heldout, stop="early")
    with pytest.raises(ValueError, match="train_sets"):
        _monitor(train[:1], heldout)
    with pytest.raises(ValueError, match="num_samples"):
        _monitor(train, heldout, num_samples=0)
    with pytest.raises(ValueError, match="epochs must increase"):
        mon = _monitor(train, heldout)
        mon(jnp.asarray(train), epoch=2)
        mon(jnp.asarray(train), epoch=2)
    for name, value in (("auc_threshold", 5), ("memorized_threshold", -1)):
        with pytest.raises(ValueError, match=name):
            _monitor(train, heldout, **{name: value})


def test_items_the_twins_cannot_have_been_trained_on_are_refused_with_the_argument_named():
    train, heldout = _data()
    mon = _monitor(train, heldout)
    # Twin parameters for three twins, two training sets.
    with pytest.raises(ValueError, match="stacked_params must stack 2 twins"):
        mon(jnp.asarray(np.concatenate([train, train[:1]])), epoch=1)
    assert mon.rows == []
    pixels = np.round((np.clip(heldout, -1, 1) + 1) * 127.5).astype(np.uint8)
    with pytest.raises(ValueError, match="heldout must be float images"):
        _monitor(train, pixels)
    with pytest.raises(ValueError, match=r"heldout spans \[0, 255\], far from train_sets'"):
        _monitor(train, pixels.astype(np.float32))
    broken = train.copy()
    broken[1, 3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="train_sets holds 1 NaN"):
        _monitor(broken, heldout)
    with pytest.raises(ValueError, match=r"offsets must be \[K, C\] = \[2, 1\]"):
        _monitor(train, heldout, offsets=np.zeros((3, 1)))
    tokens = np.random.default_rng(0).integers(0, 4, (2, 10, 6))
    with pytest.raises(ValueError, match=r"heldout must be integer tokens in \[0, num_symbols=4\)"):
        monitor_lib.BiasMonitor(
            _memorizing_eps, SCHEDULE, tokens, tokens[0] + 4, "tokens", num_symbols=4
        )


def _monitored_smoke(stop, **monitor):
    from configs import smoke

    config = smoke.get_config()
    with config.unlocked():
        config.monitor.update(enabled=True, stop=stop, num_samples=16, sampling_steps=5)
        config.monitor.update(loss_items=16, loss_repeats=1, bootstrap=20, **monitor)
    return config


def _rows(workdir):
    from diffusion_bias.training import monitor_run

    with open(os.path.join(workdir, monitor_run.ROWS)) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """An uninterrupted smoke run monitored at every snapshot, no rule."""
    from diffusion_bias.training import train

    workdir = tmp_path_factory.mktemp("monitored")
    config = _monitored_smoke("none")
    train.train_and_evaluate(config, str(workdir))
    return config, _rows(workdir), workdir


def test_training_writes_one_monitor_row_per_snapshot(monitored):
    from tests.test_metric_writers import _event_scalars

    config, rows, workdir = monitored
    spe = run_lib.steps_per_epoch(config)
    steps = run_lib.snapshot_steps(config)
    assert [r["epoch"] for r in rows] == [s / spe for s in steps]
    assert all(r["decision"] == "continue" for r in rows)
    assert {"test_loss", "membership_auc", "similarity", "memorized_fraction"} <= set(rows[0])
    # The same rows in TensorBoard, beside the training loss, at the snapshots' epochs.
    scalars, _ = _event_scalars(os.path.join(workdir, "tensorboard", "train"))
    for name in ("test_loss", "similarity", "membership_auc"):
        by_step = scalars[f"monitor/{name}"]
        epochs = [int(round(s / spe)) for s in steps]
        assert sorted(by_step) == epochs
        np.testing.assert_allclose([by_step[e] for e in epochs], [r[name] for r in rows], rtol=1e-6)


def test_a_rule_that_fires_ends_training_and_saves_the_kept_parameters(monitored, tmp_path):
    from diffusion_bias import checkpoints
    from diffusion_bias.training import monitor_run
    from diffusion_bias.training import train

    # A privacy budget between the AUC of the snapshots before the first rise and
    # that rise: the rule must stop there and keep the snapshot before it.
    _, reference, _ = monitored
    auc = [r["membership_auc"] for r in reference]
    rises = [j for j in range(1, len(auc)) if auc[j] > max(auc[:j])]
    assert rises, f"the smoke run's AUC never rises: {auc}"
    j = rises[0]
    budget = (max(auc[:j]) + auc[j]) / 2
    config = _monitored_smoke("privacy_budget", auc_threshold=budget, memorized_threshold=1.0)
    state = train.train_and_evaluate(config, str(tmp_path))
    rows = _rows(tmp_path)
    result = monitor_run.stopped_result(str(tmp_path))
    spe = run_lib.steps_per_epoch(config)
    assert len(rows) == j + 1 and rows[-1]["decision"] == "stop"
    assert rows[-1]["kept_epoch"] == result["kept_epoch"] == reference[j - 1]["epoch"]
    assert result["stopped_at_step"] == int(state.step) == round(reference[j]["epoch"] * spe)
    kept = checkpoints.TwinCheckpoints(
        str(tmp_path), run_lib.snapshot_steps(config), read_only=True
    )
    expected = jax.device_get(kept.read_snapshot(result["kept_step"]).params)
    kept.close()
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.restore(os.path.join(tmp_path, monitor_run.RESULT_PARAMS))
    for a, b in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    # Rerunning a stopped run trains no further.
    again = train.train_and_evaluate(config, str(tmp_path))
    assert int(again.step) == result["stopped_at_step"]


def test_an_interrupted_monitored_run_resumes_with_the_same_rows(monitored, tmp_path, monkeypatch):
    from diffusion_bias.training import monitor_run
    from diffusion_bias.training import train

    config, reference, _ = monitored
    calls = []
    original = monitor_run.MonitorHook.at_snapshot

    def crash_at_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill after the snapshot, before its row
        return original(*args)

    monkeypatch.setattr(monitor_run.MonitorHook, "at_snapshot", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, str(tmp_path))
    monkeypatch.setattr(monitor_run.MonitorHook, "at_snapshot", original)
    train.train_and_evaluate(config, str(tmp_path))
    assert _rows(tmp_path) == reference


def test_twins_in_their_own_shifted_spaces_give_the_unshifted_statistics():
    train, heldout = _data()
    offsets = np.array([[0.7], [-0.4]], np.float32)  # [K, C]: per-split centring
    shifted = train - offsets[:, None, None, None, :]
    plain = _monitor(train, heldout)(jnp.asarray(train), epoch=1)
    moved = _monitor(train, heldout, offsets=offsets)(jnp.asarray(shifted), epoch=1)
    # Losses are taken in each twin's space: the same as unshifted.
    for name in ("test_loss", "train_loss", "membership_auc"):
        assert moved[name] == pytest.approx(plain[name], rel=1e-3, abs=1e-4), name
    # Samples are mapped back: the copies land on their own (unshifted) training set.
    # (The chain itself is not shift-equivariant, so the copies drawn may differ.)
    assert moved["memorized_fraction"] > 0.9 and moved["closer_to_own"] > 0.9


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_rule_firing_at_the_first_snapshot_keeps_none_and_writes_strict_json(tmp_path):
    from diffusion_bias.training import monitor_run
    from diffusion_bias.training import train

    # An AUC budget below any AUC: the rule fires at the first snapshot, before any to keep.
    config = _monitored_smoke("privacy_budget", auc_threshold=0.01, memorized_threshold=1.0)
    train.train_and_evaluate(config, str(tmp_path))
    with open(os.path.join(tmp_path, monitor_run.RESULT)) as f:
        result = _strict_json(f.read())
    assert result["kept_epoch"] is None and result["kept_step"] is None
    with open(os.path.join(tmp_path, monitor_run.ROWS)) as f:
        rows = [_strict_json(line) for line in f]
    assert len(rows) == 1 and rows[0]["decision"] == "stop"


def test_a_stopped_result_of_another_config_does_not_stop_a_retrained_workdir(tmp_path):
    from diffusion_bias.training import monitor_run
    from diffusion_bias.training import train

    config = _monitored_smoke("privacy_budget", auc_threshold=0.01, memorized_threshold=1.0)
    train.train_and_evaluate(config, str(tmp_path))
    assert monitor_run.stopped_result(str(tmp_path)) is not None
    # The workdir emptied of the run (checkpoints, config) but not of the monitor's files,
    # then retrained with another model and a budget no snapshot exceeds.
    shutil.rmtree(os.path.join(tmp_path, "checkpoints"))
    os.remove(os.path.join(tmp_path, "config.json"))
    other = _monitored_smoke("privacy_budget", auc_threshold=1.0, memorized_threshold=1.0)
    with other.unlocked():
        other.model.width = 48
    state = train.train_and_evaluate(other, str(tmp_path))
    assert int(state.step) == run_lib.steps_per_epoch(other) * other.training.num_epochs
    assert monitor_run.stopped_result(str(tmp_path)) is None
    assert len(_rows(tmp_path)) == len(run_lib.snapshot_steps(other))
    assert os.path.exists(os.path.join(tmp_path, monitor_run.RESULT + ".old_run"))


def test_the_settings_defaults_are_the_default_configs_and_keywords_override_them():
    from diffusion_bias.config import default_config

    # One set of defaults: the API's equal the config's.
    assert (
        monitor_lib.MonitorSettings.from_config(default_config.get_config().monitor)
        == monitor_lib.MonitorSettings()
    )
    train, heldout = _data()
    settings = monitor_lib.MonitorSettings(stop="test_loss", patience=3)
    monitor = _monitor(train, heldout, settings=settings, patience=5)
    assert (monitor.settings.stop, monitor.settings.patience) == ("test_loss", 5)
    assert monitor.settings.num_samples == 32  # the helper's keyword, over the default
    assert monitor.stop == "test_loss" and monitor.patience == 5
    with pytest.raises(ValueError, match="patiense"):
        _monitor(train, heldout, patiense=2)
