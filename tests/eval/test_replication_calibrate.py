import json
import os

import numpy as np
import pytest
import torch

from eval.replication.calibrate import EDITS, main, run, separating_threshold
from eval.replication.descriptors import WEIGHTS_LICENSES, build_descriptor

from eval_testdata import synthetic_image, write_train_mds


def test_threshold_midpoint_when_separated_and_youden_when_overlapping():
    bg, copies = np.array([0.1, 0.2, 0.35]), np.array([0.6, 0.8, 0.95])
    r = separating_threshold(bg, copies)
    assert r["separated"] and r["threshold"] == pytest.approx(0.475) and r["gap"] == pytest.approx(0.25)
    assert r["false_positive_rate"] == 0.0 and r["recall"] == 1.0
    r = separating_threshold(np.array([0.1, 0.2, 0.3, 0.7]), np.array([0.4, 0.5, 0.65, 0.9]))
    assert not r["separated"] and r["gap"] < 0
    assert r["threshold"] == pytest.approx(0.3)  # above it: all 4 copies, 1 of 4 background pairs (J = 0.75)
    assert r["recall"] == 1.0 and r["false_positive_rate"] == 0.25


def test_dinov2_descriptor_is_first_class_and_licensed(tmp_path):
    random = build_descriptor("dinov2", None, torch.device("cpu"), random_weights=True)
    random.model.save_pretrained(tmp_path / "dinov2")
    random.transform.processor.save_pretrained(tmp_path / "dinov2")
    loaded = build_descriptor("dinov2", str(tmp_path / "dinov2"), torch.device("cpu"))
    images = [synthetic_image(np.random.default_rng(i), 72) for i in range(2)]
    a = loaded.embed_list([loaded.transform(im) for im in images])
    torch.testing.assert_close(a, random.embed_list([random.transform(im) for im in images]))
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    assert loaded.license.startswith("Apache-2.0") and WEIGHTS_LICENSES["sscd"].startswith("CC-BY-NC-4.0")
    with pytest.raises(FileNotFoundError, match="Dinov2Model"):
        build_descriptor("dinov2", str(tmp_path / "missing"), torch.device("cpu"))


def test_calibration_on_tiny_data_writes_a_threshold(tmp_path, capsys):
    rng = np.random.default_rng(0)
    train = write_train_mds(tmp_path / "train", [synthetic_image(rng, 80) for _ in range(16)])
    cfg = {"train_mds": train, "out_dir": str(tmp_path / "out"), "descriptor": "dinov2", "weights": None,
           "random_weights_test_only": True, "chunk_size": 5, "batch_size": 8, "num_workers": 0, "device": "cpu"}
    result = run(cfg, n_background=8, n_copies=6)
    assert json.loads((tmp_path / "out" / "calibration.json").read_text()) == json.loads(json.dumps(result))
    assert result["background"]["n"] == 8 and result["copies"]["n"] == 6 * len(EDITS)
    assert set(result["recall_per_edit"]) == set(EDITS) and result["descriptor_weights_license"].startswith("Apache")
    assert result["recall_per_edit"]["exact"] == 1.0  # an unedited copy scores ~1, above every other pair
    assert result["background"]["max"] < result["copies"]["p01"] or not result["separated"]
    assert "warning" in result and result["index"] == "IDMap,Flat"

    from omegaconf import OmegaConf

    path = tmp_path / "rep.yaml"
    OmegaConf.save(OmegaConf.create({**cfg, "weights": str(tmp_path / "nowhere")}), path)
    assert main([str(path), "random_weights_test_only=false"]) == 2
    assert "Dinov2Model" in capsys.readouterr().err
