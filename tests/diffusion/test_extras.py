"""Up-front checks: a remote or logger whose client is missing fails in one line naming the profile to install,
before any model is built (missing modules are simulated; the real clients may well be installed here)."""
import dataclasses
import importlib.util
import os
import sys
from typing import Any

import pytest
from omegaconf import OmegaConf

import diffusion.extras as extras
from diffusion.config import ConfigError, load_config
from diffusion.train import TrainConfig
from eval.config import run_job_cli
from run import main as run_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "yamls", "demo-cpu.yaml")
REAL_FIND_SPEC = importlib.util.find_spec


def hide(monkeypatch, *modules):
    """Makes `modules` (and their submodules) look uninstalled to diffusion.extras."""
    def find_spec(name, *args, **kwargs):
        if any(name == m or name.startswith(m + ".") for m in modules):
            return None
        return REAL_FIND_SPEC(name, *args, **kwargs)

    monkeypatch.setattr(extras.importlib.util, "find_spec", find_spec)


@pytest.fixture
def no_model_build(monkeypatch):
    def refuse(**_):
        raise AssertionError("a model was built before the up-front check")

    monkeypatch.setattr("diffusion.train.build_stable_diffusion", refuse)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_run_names_key_client_and_extra_for_a_missing_s3_client(monkeypatch, capsys, no_model_build):
    hide(monkeypatch, "boto3")
    assert run_main([DEMO, "variables.demo_dir=/nowhere", "dataset.remote=s3://bucket/shapes"]) == 2
    err = one_line_error(capsys)
    assert "demo-cpu.yaml: dataset.remote=s3://bucket/shapes needs boto3" in err
    assert "make install EXTRAS=cloud" in err and "requirements/cloud.txt" in err


def test_checkpoints_to_object_storage_are_checked_too(monkeypatch, capsys, no_model_build):
    hide(monkeypatch, "oci")
    assert run_main([DEMO, "trainer.save_folder=oci://bucket/ckpts"]) == 2
    assert "trainer.save_folder=oci://bucket/ckpts needs oci" in one_line_error(capsys)


@pytest.mark.parametrize("uri, module", [
    ("gs://b/x", "google.cloud.storage"),
    ("azure://container/x", "azure.storage.blob"),
    ("azure-dl://fs/x", "azure.storage.filedatalake"),
    ("S3://b/x", "boto3"),
])
def test_each_scheme_asks_for_its_client(monkeypatch, uri, module):
    hide(monkeypatch, module)
    cfg = load_config(DEMO, [f"dataset.remote={uri}"], TrainConfig)
    with pytest.raises(ConfigError, match=f"needs {module}, which is not installed: make install EXTRAS=cloud"):
        extras.check_config(cfg)


def test_a_missing_parent_package_counts_as_missing(monkeypatch):
    # find_spec("google.cloud.storage") raises ModuleNotFoundError when `google` itself is absent
    def find_spec(name, *args, **kwargs):
        if name.startswith("google"):
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")
        return REAL_FIND_SPEC(name, *args, **kwargs)

    monkeypatch.setattr(extras.importlib.util, "find_spec", find_spec)
    assert not extras.installed("google.cloud.storage")
    assert extras.installed("omegaconf")


@pytest.mark.parametrize("logger, module", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_logger_without_its_client_fails_before_the_model_is_built(monkeypatch, capsys, no_model_build, logger, module):
    hide(monkeypatch, module)
    assert run_main([DEMO, f"loggers.{logger}={{}}"]) == 2
    err = one_line_error(capsys)
    assert f"loggers.{logger} needs {module}" in err and "make install EXTRAS=loggers" in err


def test_local_paths_other_schemes_and_variables_pass(monkeypatch):
    hide(monkeypatch, *{m for mods in extras.SCHEMES.values() for m in mods}, "wandb", "tensorboard")
    cfg = load_config(DEMO, ["dataset.remote=https://example.invalid/shards", "model.vae=hf://org/vae",
                             "variables.unused=s3://bucket/not-read"], TrainConfig)
    extras.check_config(cfg)  # nothing raised: https/hf need no extra, variables feed no builder
    assert extras.needs(cfg) == []


def test_with_the_client_installed_the_check_passes():
    pytest.importorskip("boto3", reason="boto3 comes with requirements/test.txt (moto)")
    cfg = load_config(DEMO, ["dataset.remote=s3://bucket/shapes"], TrainConfig)
    assert [k for k, _, _ in extras.needs(cfg)] == ["dataset.remote"]
    extras.check_config(cfg)


@dataclasses.dataclass
class EvalLike:
    model: Any = None


def test_eval_cli_checks_before_running_the_job(monkeypatch, tmp_path, capsys):
    hide(monkeypatch, "boto3")
    path = tmp_path / "eval.yaml"
    OmegaConf.save(OmegaConf.create({"model": "s3://bucket/run/latest-rank0.pt"}), path)

    def job(cfg):
        raise AssertionError("the job ran")

    status, _ = run_job_cli([str(path)], "prog", "test job", EvalLike, job)
    assert status == 2
    assert "eval.yaml: model=s3://bucket/run/latest-rank0.pt needs boto3" in one_line_error(capsys)


def test_verify_reports_a_client_that_does_not_import(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    assert extras.main(["--verify", "loggers"]) == 1
    assert "error: profile loggers: wandb: ModuleNotFoundError" in capsys.readouterr().err
    monkeypatch.setattr(extras, "PROFILES", {**extras.PROFILES, "loggers": ("json",)})
    assert extras.main(["--verify", "loggers"]) == 0
