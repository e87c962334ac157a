"""config.json: written once, read back as saved, a different config refused by name."""

import json
import os

import pytest

from configs import smoke
from diffusion_bias.config import config_file


def test_the_saved_config_reads_back_as_its_json(tmp_path):
    workdir = str(tmp_path / "run")
    config = smoke.get_config()
    config_file.save_config(workdir, config)
    assert config_file.load_config(workdir) == json.loads(
        config.to_json_best_effort(sort_keys=True)
    )


def test_resuming_with_the_same_config_or_other_analysis_fields_passes(tmp_path):
    workdir = str(tmp_path)
    config_file.save_config(workdir, smoke.get_config())
    with open(os.path.join(workdir, "config.json"), "rb") as f:
        saved = f.read()
    config = smoke.get_config()
    config_file.save_config(workdir, config)
    with config.unlocked():
        config.analysis.seed = config.analysis.seed + 1
    config_file.save_config(workdir, config)
    # A resumed run never rewrites the file.
    with open(os.path.join(workdir, "config.json"), "rb") as f:
        assert f.read() == saved


def test_a_different_config_is_refused_naming_each_differing_field(tmp_path):
    workdir = str(tmp_path)
    config_file.save_config(workdir, smoke.get_config())
    config = smoke.get_config()
    with config.unlocked():
        config.optimizer.learning_rate = 0.5
        config.seed = config.seed + 1
    with pytest.raises(ValueError, match=r"differing fields: optimizer.learning_rate, seed\."):
        config_file.save_config(workdir, config)


def test_a_run_resumes_on_another_device_layout(tmp_path):
    workdir = str(tmp_path)
    config_file.save_config(workdir, smoke.get_config())
    config = smoke.get_config()
    with config.unlocked():
        config.training.update(twin_devices=2, num_devices=2)
    config_file.save_config(workdir, config)  # where the twins run, not what they learn
    with config.unlocked():
        config.training.batch_size = 8
    with pytest.raises(ValueError, match=r"differing fields: training.batch_size\."):
        config_file.save_config(workdir, config)


def test_a_run_saved_before_a_field_existed_resumes_under_its_old_value(tmp_path):
    workdir = str(tmp_path)
    config_file.save_config(workdir, smoke.get_config())
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    del saved["model"]["dtype"]  # as written before config.model.dtype existed
    del saved["snapshots"]["include_last"]  # and before snapshots.include_last
    del saved["splits"]["seeds_per_split"]  # ... splits.seeds_per_split
    del saved["diffusion"]["min_train_step"]  # ... diffusion.min_train_step
    with open(path, "w") as f:
        json.dump(saved, f)
    config_file.save_config(workdir, smoke.get_config())  # float32, as it trained
    config = smoke.get_config()
    with config.unlocked():
        config.model.dtype = "bfloat16"
    with pytest.raises(ValueError, match=r"differing fields: model.dtype\."):
        config_file.save_config(workdir, config)
    config = smoke.get_config()
    config.diffusion.min_train_step = 2  # not how the saved run trained
    with pytest.raises(ValueError, match=r"differing fields: diffusion.min_train_step\."):
        config_file.save_config(workdir, config)


def test_the_training_fingerprint_ignores_analysis_and_layout_but_not_training_fields():
    saved = json.loads(smoke.get_config().to_json_best_effort())
    base = config_file.training_fingerprint(saved)
    for dotted, value in (("analysis.num_samples", 7), ("training.twin_devices", 2)):
        other = json.loads(json.dumps(saved))
        section, name = dotted.split(".")
        other[section][name] = value
        assert config_file.training_fingerprint(other) == base, dotted
    other = json.loads(json.dumps(saved))
    other["model"]["width"] += 1
    assert config_file.training_fingerprint(other) != base
    # The dict it was given is left as it was.
    assert saved == json.loads(smoke.get_config().to_json_best_effort())
