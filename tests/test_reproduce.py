"""launch.reproduce: its --seeds flag, the workdir of every run, the report of them all.

Training and analysis are replaced by stand-ins that record what they were
given, so the whole layout is checked in seconds; one subprocess checks the
command line itself.
"""

import os
import subprocess
import sys

from absl import app
import jax
import pytest

from configs import smoke
from diffusion_bias import figures
from diffusion_bias.instrument import analysis
from diffusion_bias.training import train
from launch import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _configs():
    return {"digits": smoke.get_config("digits"), "grammar": smoke.get_config("grammar")}


def test_without_seeds_each_setting_runs_once_with_its_config_in_its_own_folder():
    configs = _configs()
    todo = reproduce.runs(configs)
    assert [(s, seed, rel) for s, seed, _, rel in todo] == [
        ("digits", 0, "digits"),
        ("grammar", 0, "grammar"),
    ]
    assert all(config is configs[s] for s, _, config, _ in todo)


def test_seeds_give_a_run_per_seed_and_setting_with_both_seeds_set():
    configs = _configs()
    todo = reproduce.runs(configs, [0, 3])
    assert [(s, seed, rel) for s, seed, _, rel in todo] == [
        ("digits", 0, os.path.join("digits", "seed0")),
        ("grammar", 0, os.path.join("grammar", "seed0")),
        ("digits", 3, os.path.join("digits", "seed3")),
        ("grammar", 3, os.path.join("grammar", "seed3")),
    ]
    for _, seed, config, _ in todo:
        assert config.seed == seed and config.splits.seed == seed
    # The settings' own configs are left as they were.
    assert configs["digits"].seed == 0 and configs["digits"].splits.seed == 0


def test_seeds_flag_takes_distinct_integers():
    assert reproduce.parse_seeds(None) is None
    assert reproduce.parse_seeds(["2", "0", "1"]) == [2, 0, 1]
    for bad in (["0", "x"], ["1", "1"], []):
        with pytest.raises(app.UsageError):
            reproduce.parse_seeds(bad)


@pytest.mark.parametrize("seeds", [None, [0, 1]])
def test_run_trains_and_analyses_each_run_in_its_workdir_and_reports_all(
    seeds, tmp_path, monkeypatch
):
    trained, analysed_with = [], []

    def fake_train(config, run_dir):
        trained.append((os.path.relpath(run_dir, tmp_path), config.seed, config.splits.seed))
        os.makedirs(run_dir, exist_ok=True)

    def fake_analyze(run_dir, overrides):
        analysed_with.append(overrides)
        seed = 0 if os.path.basename(run_dir) in ("digits", "seed0") else 1
        onset = 100.0 + 10 * seed
        return dict(
            checkpoints=[10.0, 100.0, 1000.0],
            verdict=dict(
                bias_onset_epoch=onset,
                test_loss_min_epoch=500.0,
                gap_epochs=500.0 - onset,
                gap_interval=[0.0, 500.0],
                bias_statistic="sample_split similarity (peak)",
                conclusive=seed == 0,
                reasons=[] if seed == 0 else ["a reason"],
            ),
        )

    monkeypatch.setattr(train, "train_and_evaluate", fake_train)
    monkeypatch.setattr(analysis, "analyze", fake_analyze)
    monkeypatch.setattr(figures, "draw_all", lambda stats, out_dir: [])
    config = smoke.get_config("digits")
    path = reproduce.run(str(tmp_path), {"digits": config}, seeds)
    text = open(path).read()
    # The config in hand rules every analysis, whatever the run saved when it trained.
    assert analysed_with and all(o == config.analysis.to_dict() for o in analysed_with)
    assert path == str(tmp_path / "report.md")
    if seeds is None:
        assert trained == [("digits", 0, 0)]
        assert "| digits | 0 | 100 " in text and "## digits\n" in text
        assert "**digits**: conclusive in 1 of 1 seeds; median gap 400 epochs." in text
    else:
        assert trained == [
            (os.path.join("digits", "seed0"), 0, 0),
            (os.path.join("digits", "seed1"), 1, 1),
        ]
        assert "| digits | 0 | 100 " in text and "| digits | 1 | 110 " in text
        assert "## digits, seed 0" in text and "## digits, seed 1" in text
        assert (
            "**digits**: conclusive in 1 of 2 seeds; median gap 395 epochs (range 390 to 400)."
            in text
        )


def test_command_line_refuses_a_bad_seed_list_before_writing_anything(tmp_path):
    workdir = tmp_path / "w"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.reproduce", f"--workdir={workdir}", "--seeds=0,zero"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        proc.stderr.strip()
        == "Usage error: --seeds takes integers, got 0,zero (flags: --helpshort)"
    )
    assert not workdir.exists()


@pytest.mark.parametrize("backend,devices", [("cpu", 1), ("gpu", 2), ("cpu", 2), ("cpu", 4)])
def test_cpu_layout_gives_a_device_per_twin_only_to_the_settings_that_gain(
    backend, devices, monkeypatch
):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    grammar, digits = smoke.get_config("grammar"), smoke.get_config("digits")
    laid_out = reproduce.cpu_layout("grammar", grammar), reproduce.cpu_layout("digits", digits)
    if backend != "cpu" or devices == 1:
        assert laid_out == (grammar, digits)  # as they are
        return
    layout = [(c.training.twin_devices, c.training.num_devices) for c in laid_out]
    assert layout == [(2, 2), (1, 1)]
    assert (grammar.training.twin_devices, grammar.training.num_devices) == (1, 0)  # a copy
