import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import eval.results as results_mod
from eval.extractors import random_tiny_clip, random_tiny_fid_extractor
from eval.features import extract_features
from eval.images import ids_of, list_images
from eval.metrics import clip_score, fid_from_features, kid_from_features
from eval.results import evaluate_guidance_scales, load_prompts

from eval_testdata import synthetic_image, write_folder, write_prompts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scales")
    rng = np.random.default_rng(2)
    ids = [f"{i:03d}" for i in range(10)]
    ref = write_folder(root / "ref", [synthetic_image(rng, 72) for _ in range(12)])
    gens = {
        2.0: write_folder(root / "w2", [synthetic_image(rng, 64) for _ in ids], ids),
        7.5: write_folder(root / "w7.5", [synthetic_image(rng, 64).rotate(180) for _ in ids], ids),
    }
    prompts = write_prompts(root / "prompts.jsonl", ids)
    kwargs = dict(fid_extractor=random_tiny_fid_extractor(torch.device("cpu")),
                  clip=random_tiny_clip(torch.device("cpu")), batch_size=8, kid_subsets=4, seed=1)
    return root, ref, gens, prompts, kwargs


def test_writes_per_scale_metrics_that_match_direct_computation(setup):
    root, ref, gens, prompts_file, kw = setup
    prompts = load_prompts(prompts_file)
    out = str(root / "out")
    res = evaluate_guidance_scales(gens, ref, prompts, out, **kw)
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f) == json.loads(json.dumps(res))
    assert set(res["per_scale"]) == {"2", "7.5"}
    assert "warning" in res  # random-tiny extractors are flagged
    clip_ex = kw["clip"].image_extractor()
    ref_files = list_images(ref)
    for scale, folder in gens.items():
        row = res["per_scale"][f"{scale:g}"]
        files = list_images(folder)
        inc = extract_features(files, kw["fid_extractor"])
        emb = extract_features(files, clip_ex)
        text = kw["clip"].embed_texts([prompts[i] for i in ids_of(files)])
        assert row["n"] == len(files) == 10
        assert row["fid"] == pytest.approx(fid_from_features(inc, extract_features(ref_files, kw["fid_extractor"])), rel=1e-6)
        assert row["kid"] == pytest.approx(kid_from_features(inc, extract_features(ref_files, kw["fid_extractor"]), 4, 1000, 1), rel=1e-6)
        assert row["clip_fid"] == pytest.approx(fid_from_features(emb, extract_features(ref_files, clip_ex)), rel=1e-6)
        assert row["clip_score"] == pytest.approx(clip_score(emb, text), abs=1e-6)
    assert res["per_scale"]["2"]["fid"] != res["per_scale"]["7.5"]["fid"]
    plot = Image.open(os.path.join(out, res["plot"]))
    assert plot.format == "PNG" and plot.width > 500


def test_rerun_reuses_finished_scales_and_redoes_changed_ones(setup, monkeypatch):
    root, ref, gens, prompts_file, kw = setup
    prompts = load_prompts(prompts_file)
    out = str(root / "out_resume")
    first = evaluate_guidance_scales(gens, ref, prompts, out, **kw)
    calls = []
    real = results_mod.extract_features
    monkeypatch.setattr(results_mod, "extract_features", lambda files, ex, **k: calls.append(files) or real(files, ex, **k))
    assert evaluate_guidance_scales(gens, ref, prompts, out, **kw)["per_scale"] == first["per_scale"]
    assert calls == []  # everything came from per-scale results and the reference cache
    extra = os.path.join(gens[7.5], "999.png")
    Image.new("RGB", (64, 64), "red").save(extra)
    try:
        prompts["999"] = "a red square"
        again = evaluate_guidance_scales(gens, ref, prompts, out, **kw)
    finally:
        os.remove(extra)
    assert again["per_scale"]["7.5"]["n"] == 11 and again["per_scale"]["2"] == first["per_scale"]["2"]
    assert len(calls) == 2 and all(len(c) == 11 for c in calls)  # only the changed scale, Inception + CLIP


def test_a_generated_image_without_prompt_is_named(setup):
    root, ref, gens, prompts_file, kw = setup
    prompts = load_prompts(prompts_file)
    del prompts["004"]
    with pytest.raises(KeyError, match="'004'"):
        evaluate_guidance_scales({2.0: gens[2.0]}, ref, prompts, str(root / "out_missing"), **kw)


def test_bad_prompt_line_and_bad_scale_are_named(tmp_path, setup):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "1", "prompt": "x"}\n{"id": "2"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        load_prompts(str(bad))
    root, ref, gens, prompts_file, kw = setup
    with pytest.raises(ValueError, match="'high'"):
        evaluate_guidance_scales({"high": gens[2.0]}, ref, load_prompts(prompts_file), str(tmp_path / "o"), **kw)
