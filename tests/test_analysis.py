"""launch.analyze end to end on smoke workdirs (digits images and grammar tokens)."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from configs import smoke
from diffusion_bias import figures
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks
from diffusion_bias.data import images
from diffusion_bias.diffusion import schedules
from diffusion_bias.instrument import analysis
from diffusion_bias.instrument import measure
from diffusion_bias.instrument import report
from diffusion_bias.instrument import verdict
from diffusion_bias.training import train
from tests import test_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", params=["digits", "grammar"])
def trained(request, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp(f"smoke_{request.param}"))
    train.train_and_evaluate(smoke.get_config(request.param), workdir)
    return request.param, workdir


def test_analyze_writes_statistics_figures_and_verdict(trained):
    setting, workdir = trained
    proc = subprocess.run(
        [sys.executable, "-m", "launch.analyze", f"--workdir={workdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Bias onset" in proc.stdout or "Inconclusive" in proc.stdout
    with open(os.path.join(workdir, "analysis", "statistics.json")) as f:
        stats = json.load(f)
    num = len(stats["checkpoints"])
    assert num == len(run_lib.snapshot_steps(smoke.get_config(setting)))
    for key in ("test_loss", "train_loss", "membership_auc"):
        assert len(stats[key]) == num
    assert len(stats["sample_split"]["mean"]) == num
    assert set(stats["verdict"]) >= {
        "bias_onset_epoch",
        "test_loss_min_epoch",
        "conclusive",
        "reasons",
    }
    for which in ("bias_onset", "test_loss_min"):
        i, epoch = stats["verdict"][f"{which}_index"], stats["verdict"][f"{which}_epoch"]
        assert (i is None) == (epoch is None) and (i is None or stats["checkpoints"][i] == epoch)
    if setting == "grammar":
        assert len(stats["nn_divergence"]) == num and len(stats["kl_bp"]["values"][0]) == 4
        assert len(stats["nn_divergence_per_model"][0]) == 2
        along = stats["kl_bp_along_t"]
        assert along["indices"] == stats["uturn"]["indices"]
        assert along["epochs"] == [stats["checkpoints"][i] for i in along["indices"]]
        v = stats["verdict"]
        assert {v["bias_onset_index"], v["test_loss_min_index"]} - {None} <= set(along["indices"])
        assert [len(row) for row in along["values"][0]] == [len(along["ratios"])] * 4
        # Fig. 11 at the U-turn's snapshots: the model per snapshot, BP_k per k (depth 3).
        random = stats["uturn_random"]
        assert random["indices"] == stats["uturn"]["indices"]
        assert len(random["model"]) == len(random["indices"]) and len(random["bp"]) == 4
        assert len(random["memorizing"]) == len(random["ratios"]) == 2
        assert len(stats["loss_decomposition"]["l_star_train_mean_t"]) == num
        assert stats["protocol"]["min_grammatical"] == 0.5
    else:
        assert len(stats["score_cosine"]["heldout"][0]) == 2
    # Each stopping rule replayed over the run: it keeps one of the snapshots.
    rules = {r["rule"]: r for r in stats["stopping_rules"]}
    assert set(rules) == {"none", "test_loss", "bias_onset", "privacy_budget"}
    assert rules["none"]["kept_epoch"] == stats["checkpoints"][-1]
    for r in rules.values():
        assert r["kept_epoch"] is None or r["kept_epoch"] in stats["checkpoints"]
    if rules["test_loss"]["kept_epoch"] is not None:
        best = stats["checkpoints"][stats["test_loss"].index(min(stats["test_loss"]))]
        assert rules["test_loss"]["kept_epoch"] <= best
    # The membership audit at every snapshot, the one-run bound on the fixed-size split.
    privacy = stats["privacy"]
    assert len(privacy["epsilon"]) == len(privacy["strongest"]) == num
    assert privacy["canaries"] == "fixed-size split"
    scores = {"loss", "loss_at_t", "calibrated_twin"} | (
        {"calibrated_bp"} if setting == "grammar" else set()
    )
    assert set(privacy["scores"]) == scores
    assert all(e >= 0 for e in privacy["epsilon"]) and set(privacy["epsilon_score"]) <= scores
    assert all(lo <= hi for lo, hi in privacy["auc_interval"])
    if setting == "digits":
        assert len(stats["sample_quality"]) == num
        assert all(0 < q <= 1 for q in stats["sample_quality"])
    pngs = [p for p in proc.stdout.split() if p.endswith(".png")]
    assert pngs and all(os.path.getsize(p) > 1000 for p in pngs)


def test_coin_assignment_audits_only_the_canaries_its_coins_dealt(tmp_path):
    config = smoke.get_config()
    with config.unlocked():
        config.splits.assignment = "coin"
        config.training.num_epochs = 2
        config.snapshots.update(num_snapshots=2, first_epoch=1)
    train.train_and_evaluate(config, str(tmp_path))
    stats = analysis.analyze(str(tmp_path))
    assert stats["privacy"]["canaries"] == "coin"
    canary = run_lib.prepare(config, str(tmp_path)).twin_data.splits.canary_twin
    # Half of the positions on each side, by coin: at most all of a twin's items.
    assert 0.3 < canary.mean() < 0.7
    assert len(stats["privacy"]["epsilon_per_twin"][0]) == 2


def test_rerun_reads_the_cache_and_gives_the_same_statistics(trained):
    _, workdir = trained
    first = analysis.analyze(workdir)
    cache = os.path.join(workdir, "analysis", "cache")
    mtimes = {f: os.path.getmtime(os.path.join(cache, f)) for f in os.listdir(cache)}
    second = analysis.analyze(workdir)
    assert first == second
    assert mtimes == {f: os.path.getmtime(os.path.join(cache, f)) for f in os.listdir(cache)}
    # How the verdict aggregates twins is applied to the cached arrays: nothing recomputed.
    median = analysis.analyze(workdir, overrides={"aggregate": "median"})
    assert mtimes == {f: os.path.getmtime(os.path.join(cache, f)) for f in os.listdir(cache)}
    assert median["verdict"] == first["verdict"]  # two twins: the median is the mean


def test_sampling_steps_0_is_the_full_chain_and_others_respace():
    schedule = schedules.token_schedule(100)
    assert measure.sampling_schedule(schedule, 0) is schedule
    assert measure.sampling_schedule(schedule, None) is schedule
    assert measure.sampling_schedule(schedule, 20).num_steps == 20
    assert measure.sampling_schedule(schedule, 500).num_steps == 100
    # The rule is the config check's.
    config = smoke.get_config("grammar")
    config.analysis.sampling_steps = -3
    with pytest.raises(config_checks.ConfigError, match="config.analysis.sampling_steps"):
        config_checks.check_config(config)


def test_two_seeds_a_split_train_four_models_and_show_same_split_pairs_apart(tmp_path):
    config = smoke.get_config()
    with config.unlocked():
        config.splits.seeds_per_split = 2
        config.training.num_epochs = 2
        config.snapshots.update(num_snapshots=2, first_epoch=1)
    train.train_and_evaluate(config, str(tmp_path))
    run = run_lib.prepare(config, str(tmp_path))
    items = run.twin_data.train  # [4, n, ...]: models 0, 1 on split 0; 2, 3 on split 1
    assert len(items) == 4
    assert (items[0] == items[1]).all() and (items[2] == items[3]).all()
    assert not (items[1] == items[2]).all()
    stats = analysis.analyze(str(tmp_path))
    assert stats["protocol"]["twins"] == 4 and stats["protocol"]["seeds_per_split"] == 2
    assert stats["same_split"]["pairs"] == dict(cross=4, same=2)
    # The verdict's similarity is over the cross-split pairs only.
    assert stats["sample_split"]["mean"] == stats["same_split"]["similarity"]["cross"]["mean"]
    assert len(stats["privacy"]["epsilon_per_twin"][0]) == 4
    figures.draw_all(stats, str(tmp_path))
    assert os.path.exists(tmp_path / "fig_same_split.png")


def _smoke_run(workdir, **model):
    config = smoke.get_config()
    with config.unlocked():
        config.training.num_epochs = 4
        config.snapshots.update(num_snapshots=3, first_epoch=1)
        config.model.update(**model)
    train.train_and_evaluate(config, workdir)
    return analysis.analyze(workdir)


def test_a_model_retrained_in_the_workdir_gets_its_own_statistics_not_the_cached_ones(tmp_path):
    workdir = str(tmp_path)
    first = _smoke_run(workdir)
    # The run deleted but its analysis kept; another model trained in its place.
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    os.remove(os.path.join(workdir, "config.json"))
    second = _smoke_run(workdir, width=48)
    assert first["steps"] == second["steps"]
    assert all(a != b for a, b in zip(first["test_loss"], second["test_loss"]))
    # The same model analysed again reads its own cache: the same numbers.
    assert analysis.analyze(workdir) == second


def test_a_snapshot_with_overwritten_bytes_is_named_and_left_out(tmp_path, caplog):
    workdir = str(tmp_path)
    intact = _smoke_run(workdir)
    damaged_step = intact["steps"][1]
    shutil.rmtree(os.path.join(workdir, "analysis"))
    test_checkpoints.overwrite_bytes(os.path.join(workdir, "checkpoints", str(damaged_step)))
    caplog.set_level(logging.WARNING)
    stats = analysis.analyze(workdir)
    named = os.path.join("checkpoints", str(damaged_step))
    assert [r for r in caplog.records if named in r.getMessage() and "damaged" in r.getMessage()]
    assert [d["step"] for d in stats["damaged_snapshots"]] == [damaged_step]
    kept = [i for i, s in enumerate(intact["steps"]) if s != damaged_step]
    assert stats["steps"] == [intact["steps"][i] for i in kept]
    # The other snapshots' statistics are those of the intact run.
    assert stats["test_loss"] == [intact["test_loss"][i] for i in kept]
    section = report.setting_section("digits", stats, [], workdir)
    reason = stats["damaged_snapshots"][0]["reason"]
    assert (
        f"Left out: the snapshot at epoch {verdict.number(stats['damaged_snapshots'][0]['epoch'])}, {reason}"
        in section
    )


def test_output_dir_takes_every_result_and_leaves_the_workdir_as_it_was(tmp_path):
    workdir, out = str(tmp_path / "run"), str(tmp_path / "out")
    config = smoke.get_config()
    with config.unlocked():
        config.training.num_epochs = 2
        config.snapshots.update(num_snapshots=2, first_epoch=1)
    train.train_and_evaluate(config, workdir)
    before = {
        os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
        for d, _, names in os.walk(workdir)
        for f in names
    }
    proc = subprocess.run(
        [sys.executable, "-m", "launch.analyze", f"--workdir={workdir}", f"--output_dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.path.exists(os.path.join(out, "analysis", "statistics.json"))
    assert os.listdir(os.path.join(out, "tensorboard", "analysis"))
    after = {
        os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
        for d, _, names in os.walk(workdir)
        for f in names
    }
    assert after == before


# launch.analyze as a user who may not write to the workdir (the tests run as root,
# whom file modes do not stop: os.access answers as for another user).
_READ_ONLY_WORKDIR = """
import os, runpy, sys
workdir = sys.argv[1]
access = os.access
os.access = lambda path, mode, **kw: (
    False if os.path.abspath(path) == os.path.abspath(workdir) and mode & os.W_OK
    else access(path, mode, **kw)
)
sys.argv = ["launch.analyze", "--workdir=" + workdir]
runpy.run_module("launch.analyze", run_name="__main__")
"""


def test_a_workdir_one_cannot_write_is_refused_in_one_line_naming_output_dir(trained):
    _, workdir = trained
    proc = subprocess.run(
        [sys.executable, "-c", _READ_ONLY_WORKDIR, workdir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        f"Config error: --workdir={workdir} cannot be written to: pass --output_dir=DIR for "
        "the results"
    ], proc.stderr


def test_sigterm_stops_the_analysis_in_one_line_and_the_rerun_reads_what_it_cached(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(smoke.get_config(), workdir)
    cache = os.path.join(workdir, "analysis", "cache")
    cmd = [sys.executable, "-m", "launch.analyze", f"--workdir={workdir}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while proc.poll() is None and not (os.path.isdir(cache) and os.listdir(cache)):
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the analysis ended before the signal landed")
    assert proc.returncode == 75, out
    assert "Traceback" not in out
    assert out.strip().splitlines()[-1] == (
        f"SIGTERM: stopped. The snapshots analysed so far are cached in {workdir}/analysis/cache; "
        "rerun the same command to go on."
    )
    kept = set(os.listdir(cache))
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert kept <= set(os.listdir(cache))
    assert "read from the cache" in rerun.stderr


def test_statistics_json_is_strict_json(trained):
    _, workdir = trained
    analysis.analyze(workdir)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    with open(os.path.join(workdir, "analysis", "statistics.json")) as f:
        json.load(f, parse_constant=refuse)


def test_the_analysis_compiles_the_same_programs_whatever_the_number_of_snapshots(tmp_path):
    compiles, counting = [], [False]

    def count(name, secs, **kwargs):
        del secs, kwargs
        if counting[0] and name == "/jax/core/compile/backend_compile_duration":
            compiles[-1] += 1

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        for num_snapshots in (2, 5):
            config = smoke.get_config()
            with config.unlocked():
                config.snapshots.update(num_snapshots=num_snapshots, first_epoch=1)
            workdir = str(tmp_path / str(num_snapshots))
            train.train_and_evaluate(config, workdir)
            jax.clear_caches()  # as a fresh process: nothing compiled yet
            compiles.append(0)
            counting[0] = True
            stats = analysis.analyze(workdir)
            counting[0] = False
            assert len(stats["steps"]) == num_snapshots
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    # Every program is compiled once and reused at every snapshot.
    assert compiles[0] == compiles[1] > 0, compiles


def test_an_invalid_analysis_override_to_the_api_is_a_config_error_naming_it(trained):
    _, workdir = trained
    with pytest.raises(config_checks.ConfigError, match="config.analysis.min_grammatical"):
        analysis.analyze(workdir, overrides=dict(min_grammatical=5.0))


def test_the_celeba_paper_protocol_runs_end_to_end_on_small_images(tmp_path):
    # celeba_paper's choices on the digits as a folder of files: their file order and
    # contiguous splits, the authors' U-Net and initialisation, their step range,
    # sampler, medians, every-step test loss and common centring.
    folder = tmp_path / "img_align"
    folder.mkdir()
    digits = np.round((images.digits_pool().items + 1.0) * 127.5).astype(np.uint8)[..., 0]
    for i, image in enumerate(digits[:300]):
        Image.fromarray(image, mode="L").save(folder / f"{i + 1:06d}.png")
    config = smoke.get_config()
    with config.unlocked():
        config.data = dict(name="image_folder", path=str(folder), image_size=8)
        config.centering = "per_split"
        config.splits.update(num_splits=3, assignment="contiguous", drop_overlap=False)
        config.model = dict(
            name="unet", base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
            attention_levels=(1,), layout="authors", param_init="torch",
        )  # fmt: skip
        config.diffusion.min_train_step = 2
        config.training.num_epochs = 2
        config.snapshots.update(num_snapshots=2, first_epoch=1)
        config.analysis.update(
            image_sampler="paper", aggregate="median", score_items=8, score_times=(11, 51),
            test_loss_every_step=True, test_loss_items=4, eval_centering="common",
            eval_centering_items=100,
        )  # fmt: skip
    workdir = tmp_path / "w"
    train.train_and_evaluate(config, str(workdir))
    stats = analysis.analyze(str(workdir))
    run = run_lib.prepare(config, str(workdir))
    np.testing.assert_array_equal(run.twin_data.splits.train.ravel(), np.arange(3 * 64))
    np.testing.assert_array_equal(run.twin_data.splits.heldout, np.arange(268, 300))
    protocol = stats["protocol"]
    assert protocol["twins"] == 3 and protocol["aggregate"] == "median"
    assert protocol["test_loss_every_step_items"] == 4 and protocol["eval_centering_items"] == 100
    assert len(stats["test_loss"]) == 2 and all(np.isfinite(stats["test_loss"]))
    assert np.asarray(stats["score_cosine"]["heldout"]).shape == (2, 2)
