import json
import os

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from data_prep.coco import write_coco_subset
from eval.fid_clip_job import FidClipEvalConfig, main, run

from eval_testdata import synthetic_image


def fake_coco(root, n=8):
    rng = np.random.default_rng(5)
    os.makedirs(root / "val2014")
    images, anns = [], []
    for i in range(n):
        name = f"COCO_val2014_{i + 1:012d}.jpg"
        synthetic_image(rng, 64).resize((80, 60)).save(root / "val2014" / name)
        images.append({"id": i + 1, "file_name": name})
        anns += [{"id": 10 * i + c, "image_id": i + 1, "caption": f"a red circle number {i} v{c}"} for c in range(2)]
    (root / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return str(root / "captions_val2014.json"), str(root / "val2014")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidjob")
    ann, images = fake_coco(root)
    mds = write_coco_subset(ann, images, str(root / "coco_mds"), n=6, seed=0)
    rng = np.random.default_rng(9)
    with open(os.path.join(mds, "coco_subset.json")) as f:
        ids = json.load(f)["image_ids"]
    gens = {}
    for scale in (1.0, 4.0):  # what the generation step will write: <scale folder>/<prompt id>.png
        folder = root / f"gen_{scale:g}"
        folder.mkdir()
        for i in ids:
            synthetic_image(rng, 48).save(folder / f"{i}.png")
        gens[scale] = str(folder)
    # read-only: each test writes references and results under its own tmp_path (see own_dirs)
    cfg = {
        "generated_dirs": gens, "coco_mds": mds, "reference_resolution": 40, "inception_path": "random-tiny", "clip_path": "random-tiny",
        "num_workers": 0, "batch_size": 4, "kid_subsets": 3,
    }
    return root, cfg, ids


def own_dirs(cfg, tmp_path):
    """The job's config with this test's own output, reference and prompts paths."""
    return {**cfg, "out_dir": str(tmp_path / "out"), "reference_dir": str(tmp_path / "reference"),
            "prompts_file": str(tmp_path / "reference" / "prompts.jsonl")}


def test_run_end_to_end_from_coco_mds(job, tmp_path):
    _, cfg, ids = job
    cfg = own_dirs(cfg, tmp_path)
    results = run(cfg)
    refs = sorted(n for n in os.listdir(cfg["reference_dir"]) if n.endswith(".png"))
    assert refs == sorted(f"{i}.png" for i in ids)
    assert Image.open(os.path.join(cfg["reference_dir"], refs[0])).size == (40, 40)
    prompts = [json.loads(line) for line in open(cfg["prompts_file"])]
    assert [p["id"] for p in prompts] == [str(i) for i in ids] and all("red circle" in p["prompt"] for p in prompts)
    assert set(results["per_scale"]) == {"1", "4"}
    for row in results["per_scale"].values():
        assert row["n"] == 6
        assert np.isfinite([row["fid"], row["kid"], row["clip_fid"], row["clip_score"]]).all()
        assert row["fid"] > 0 and row["clip_fid"] > 0
    with open(os.path.join(cfg["out_dir"], "results.json")) as f:
        assert json.load(f)["per_scale"]["4"]["n"] == 6
    assert os.path.isfile(os.path.join(cfg["out_dir"], "fid_vs_clip_score.png"))


def test_config_schema_rejects_unknown_and_missing_keys(job, tmp_path):
    cfg = own_dirs(job[1], tmp_path)
    with pytest.raises(Exception, match="inception_pth"):
        run({**cfg, "inception_pth": "x"})
    with pytest.raises(Exception, match="out_dir"):
        run({k: v for k, v in cfg.items() if k != "out_dir"})
    defaults = FidClipEvalConfig()
    assert defaults.inception_path.endswith("inception-2015-12-05.pt") and defaults.device == "auto"


def test_cli_runs_a_yaml_and_fails_in_one_line_on_missing_weights(job, tmp_path, capsys):
    from eval.coco_reference import write_coco_reference

    cfg = own_dirs(job[1], tmp_path)
    # references and prompts exported beforehand (by an earlier run): the yaml scores them without coco_mds
    write_coco_reference(cfg["coco_mds"], cfg["reference_dir"], cfg["prompts_file"], cfg["reference_resolution"])
    path = tmp_path / "eval.yaml"
    OmegaConf.save(OmegaConf.create({**cfg, "coco_mds": None}), path)
    assert main([str(path)]) == 0
    assert "w=4: FID" in capsys.readouterr().out
    assert main([str(path), f"inception_path={tmp_path}/w/inception-2015-12-05.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "place inception-2015-12-05.pt at" in err
    with pytest.raises(SystemExit):
        main(["--help"])
