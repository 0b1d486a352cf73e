"""Both eval yamls end to end through run.py on a freshly trained demo checkpoint (CPU, tiny random extractors),
and the generation step's promises: seeded per global prompt index, shardable across ranks, resumable."""
import glob
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

import eval.generate_images as gen
import run
from data_prep.coco import write_coco_subset
from diffusion.config import load_config
from diffusion.demo.shapes import caption, draw
from diffusion.models.stable_diffusion import StableDiffusion
from diffusion.train import TrainConfig, build_trainer
from tests.diffusion.conftest import REPO, demo_overrides, write_demo_tree

FID_YAML = os.path.join(REPO, "yamls", "eval-fid-clip.yaml")
REPLICATION_YAML = os.path.join(REPO, "yamls", "eval-replication.yaml")
DEMO_YAML = os.path.join(REPO, "yamls", "demo-cpu.yaml")
SPECS = [("red", "circle", "blue"), ("yellow", "square", "black"), ("white", "triangle", "green")]
# What every test run shrinks: 2 guidance scales, 2 sampler steps, the demo's 32px, CPU, no worker processes.
QUICK = ["guidance_scales=[1.0,4.0]", "num_inference_steps=2", "resolution=32", "generation_batch_size=2",
         "device=cpu", "num_workers=0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The demo model trained 3 batches (with EMA) and saved as a Composer checkpoint."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_tree(root, n=32)
    out = root / "train"
    overrides = demo_overrides(str(root), str(out), **{
        "trainer.max_duration": "3ba", "trainer.save_interval": "3ba", "algorithms.ema.half_life": "1ba",
    })
    trainer = build_trainer(load_config(DEMO_YAML, overrides, TrainConfig))
    trainer.fit()
    trainer.close()
    [path] = glob.glob(str(out / "checkpoints" / "ep*-ba3-rank0.pt"))
    return path, str(root / "data" / "shapes")


def fake_coco_mds(root, n=3):
    """data_prep.coco's output for n images whose captions the demo model was trained on."""
    rng = random.Random(0)
    os.makedirs(root / "val2014")
    images, anns = [], []
    for k, spec in enumerate(SPECS[:n]):
        name = f"COCO_val2014_{k + 1:012d}.jpg"
        draw(*spec, 48, rng).save(root / "val2014" / name)
        images.append({"id": 100 + k, "file_name": name})
        anns.append({"id": 500 + k, "image_id": 100 + k, "caption": caption(*spec)})
    (root / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return write_coco_subset(str(root / "captions_val2014.json"), str(root / "val2014"), str(root / "coco30k_mds"),
                             n=n, seed=0)


def test_fid_clip_yaml_generates_then_scores(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    fake_coco_mds(tmp_path)  # lands where the yaml looks: ${variables.data}/coco30k_mds
    out = tmp_path / "out"
    argv = [FID_YAML, f"model={ckpt}", f"variables.data={tmp_path}", f"out_dir={out}", *QUICK,
            "inception_path=random-tiny", "clip_path=random-tiny", "batch_size=4", "kid_subsets=2"]
    assert run.main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    assert set(results["per_scale"]) == {"1", "4"} and results["n_reference"] == 3
    for key, row in results["per_scale"].items():
        assert row["n"] == 3 and np.isfinite([row["fid"], row["kid"], row["clip_fid"], row["clip_score"]]).all()
        assert row["image_dir"] == str(out / "generated" / f"scale_{key}")
    names = sorted(os.listdir(out / "generated" / "scale_4"))
    assert names == ["100.png", "101.png", "102.png", "generation.json"]  # one image per COCO id, named by it
    assert Image.open(out / "generated" / "scale_4" / "100.png").size == (32, 32)
    assert Image.open(out / "fid_vs_clip_score.png").format == "PNG"
    # the reference set was exported at the generation resolution, the prompts beside it
    assert Image.open(tmp_path / "coco30k_reference_32" / "101.png").size == (32, 32)
    prompts = [json.loads(line) for line in open(tmp_path / "coco30k_prompts.jsonl")]
    assert {p["id"]: p["prompt"] for p in prompts} == {str(100 + k): caption(*s) for k, s in enumerate(SPECS)}

    # a second run of the same command redoes nothing: every image and every scale's result is kept
    stamps = {p: os.path.getmtime(p) for p in glob.glob(str(out / "generated" / "*" / "*.png"))}
    assert run.main(argv) == 0
    assert stamps == {p: os.path.getmtime(p) for p in stamps}
    # the same folder with another model's settings is refused, not mixed
    with pytest.raises(ValueError, match="other settings.*num_inference_steps"):
        run.main(argv + ["num_inference_steps=3"])


def test_replication_yaml_generates_from_training_captions_then_audits(checkpoint, tmp_path):
    ckpt, shapes = checkpoint
    out = tmp_path / "out"
    argv = [REPLICATION_YAML, f"model={ckpt}", f"out_dir={out}", f"train_mds={shapes}", *QUICK,
            "prompts_caption_key=caption", "max_prompts=3", f"store_dir={tmp_path}/store", "weights=null",
            "random_weights_test_only=true", "resize=64", "chunk_size=16", "background_queries=8", "grid_rows=3",
            "grid_matches=2", "batch_size=16"]
    assert run.main(argv) == 0

    summary = json.loads((out / "replication.json").read_text())
    assert set(summary["per_scale"]) == {"1", "4"} and summary["train_background"]["n"] == 8
    for key, report in summary["per_scale"].items():
        folder = out / f"scale_{key}"
        assert report["generated"]["n"] == 3 and report["n_train"] == 32
        assert json.loads((folder / "replication.json").read_text())["generated"] == report["generated"]
        rows = [json.loads(line) for line in open(folder / "matches.jsonl")]
        assert sorted(r["generated"] for r in rows) == ["demo-000000.png", "demo-000001.png", "demo-000002.png"]
        assert all(m["license"] == "CC0" for r in rows for m in r["matches"])
        grid = Image.open(folder / "top_matches.png")
        assert grid.format == "PNG" and grid.height > 3 * 100  # three generations, one row each


def test_yaml_errors_are_one_line(capsys):
    from eval.fid_clip_job import main as fid_main

    assert run.main([FID_YAML, "guidance_scale=3"]) == 2  # unknown key, named
    assert "guidance_scale" in capsys.readouterr().err
    assert fid_main([FID_YAML]) == 2  # no model and no generated_dirs
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model: required" in err


def pixels(folder, name):
    return np.asarray(Image.open(os.path.join(folder, name)), dtype=np.int16)


def test_generation_is_seeded_shardable_and_resumable(checkpoint, tmp_path, monkeypatch):
    ckpt, _ = checkpoint
    prompts = [(f"p{k}", caption(*s)) for k, s in enumerate(SPECS + SPECS[:1])]  # p3 repeats p0's prompt
    kw = dict(guidance_scales=[3.0], num_inference_steps=2, batch_size=2, seed=5, device="cpu")
    calls = []
    real_generate = StableDiffusion.generate
    monkeypatch.setattr(StableDiffusion, "generate",
                        lambda self, p, **k: calls.append((list(p), k["seed"])) or real_generate(self, p, **k))

    whole = gen.generate_images(ckpt, prompts, str(tmp_path / "a"), **kw)[3.0]
    assert calls == [([prompts[0][1], prompts[1][1]], [5, 6]), ([prompts[2][1], prompts[3][1]], [7, 8])]
    images = {n: pixels(whole, f"{n}.png") for n, _ in prompts}
    assert np.abs(images["p0"] - images["p3"]).mean() > 1  # same prompt, other seed: another image

    # same seed, same image, whatever the batch: one prompt at a time gives the same pixels
    again = gen.generate_images(ckpt, prompts, str(tmp_path / "b"), **{**kw, "batch_size": 1})[3.0]
    for name, image in images.items():
        assert np.abs(pixels(again, f"{name}.png") - image).max() <= 1, name

    # resumable: a rerun generates only what is missing, with the seed of its global index
    os.remove(os.path.join(whole, "p2.png"))
    kept = {n: os.path.getmtime(os.path.join(whole, f"{n}.png")) for n in ("p0", "p1", "p3")}
    calls.clear()
    gen.generate_images(ckpt, prompts, str(tmp_path / "a"), **kw)
    assert calls == [([prompts[2][1]], [7])]
    assert kept == {n: os.path.getmtime(os.path.join(whole, f"{n}.png")) for n in kept}
    assert np.abs(pixels(whole, "p2.png") - images["p2"]).max() <= 1

    # shardable: two ranks each take a contiguous half; together they write the single run's images
    monkeypatch.setattr(gen, "wait_for_ranks", lambda: None)
    monkeypatch.setattr(gen, "init_ranks", lambda: None)
    monkeypatch.setattr(gen, "get_rank_world", lambda: (1, 2))
    calls.clear()
    with pytest.raises(ValueError, match="2 missing"):  # rank 0 has not written its half yet
        gen.generate_images(ckpt, prompts, str(tmp_path / "c"), **kw)
    assert calls == [([prompts[2][1], prompts[3][1]], [7, 8])]
    monkeypatch.setattr(gen, "get_rank_world", lambda: (0, 2))
    sharded = gen.generate_images(ckpt, prompts, str(tmp_path / "c"), **kw)[3.0]
    for name, image in images.items():
        assert np.abs(pixels(sharded, f"{name}.png") - image).max() <= 1, name


def test_prompt_sources(tmp_path):
    mds = fake_coco_mds(tmp_path)
    pairs = gen.load_prompt_list(mds)  # in the subset's (seeded) order, as the prompts file the FID job exports
    assert dict(pairs) == {str(100 + k): caption(*s) for k, s in enumerate(SPECS)}
    from eval.coco_reference import write_coco_reference

    write_coco_reference(mds, str(tmp_path / "ref"), str(tmp_path / "coco.jsonl"), 16)
    assert gen.load_prompt_list(str(tmp_path / "coco.jsonl")) == pairs
    assert gen.load_prompt_list(mds, max_prompts=2) == gen.load_prompt_list(mds)[:2]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"id": 7, "prompt": "a red circle on a blue background"}\n')
    assert gen.load_prompt_list(str(jsonl)) == [("7", "a red circle on a blue background")]
    with pytest.raises(KeyError, match="no caption column 'blip2_caption'"):
        gen.load_prompt_list(mds, caption_key="blip2_caption")
    with pytest.raises(ValueError, match="appears twice"):
        gen.load_prompt_list([("a", "x"), ("a", "y")])
    with pytest.raises(ValueError, match="cannot be a file name"):
        gen.load_prompt_list([("../a", "x")])
    with pytest.raises(FileNotFoundError, match="no prompts at"):
        gen.load_prompt_list(str(tmp_path / "nowhere.jsonl"))
