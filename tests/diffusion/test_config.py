import os

import pytest

from diffusion.config import ConfigError, load_config
from diffusion.train import TrainConfig
from run import main as run_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "yamls", "demo-cpu.yaml")


def test_overrides_apply_and_interpolate():
    cfg = load_config(DEMO, ["variables.demo_dir=/data/x", "trainer.max_duration=7ba", "model.offset_noise=0.05"], TrainConfig)
    assert cfg.trainer.max_duration == "7ba"
    assert cfg.model.offset_noise == 0.05
    assert cfg.dataset.local == "/data/x/data/latents"
    # defaults of the builder signature fill keys the yaml leaves out
    assert cfg.model.vae_subfolder == "vae" and cfg.optimizer.eps == 1e-8


def test_unknown_key_names_key_and_file():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["model.offset_nosie=0.1"], TrainConfig)
    assert "offset_nosie" in str(err.value) and "demo-cpu.yaml" in str(err.value)


def test_unknown_nested_key_in_optional_section(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(DEMO).read().replace("    half_life: 50ba", "    half_lfe: 50ba"))
    with pytest.raises(ConfigError, match="half_lfe"):
        load_config(str(bad), [], TrainConfig)


def test_missing_required_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(DEMO).read().replace("  train_batch_size: 32\n", ""))
    with pytest.raises(ConfigError, match="trainer.train_batch_size"):
        load_config(str(bad), [], TrainConfig)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such yaml"):
        load_config("/nope/missing.yaml", [], TrainConfig)


def test_run_py_reports_one_clear_line(capsys):
    assert run_main([DEMO, "trainer.bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trainer.bogus" in err[0]
    assert run_main(["/nope.yaml"]) == 2


def test_unknown_job(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("job: dance\n")
    assert run_main([str(bad)]) == 2
