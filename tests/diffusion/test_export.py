"""Checkpoint loading (EMA vs online), export to a diffusers folder, model card and attribution, error lines.

The key test trains the demo model a few batches, exports it and checks that diffusers' own
StableDiffusionPipeline, loaded offline from the folder, draws the same images as StableDiffusion.generate.
"""
import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from streaming import MDSWriter

from data_prep import schema
from diffusion.config import load_config
from diffusion.export import export_pipeline, main as export_main
from diffusion.inference import ModelLoadError, load_checkpoint, load_model
from diffusion.model_card import data_split
from diffusion.train import TrainConfig
from tests.diffusion.conftest import train_demo

PROMPTS = ["a red circle on a blue background", "a yellow square on a black background"]


def expected_ema(after_batch, smoothing=0.5):
    """Composer starts the average at the first batch end from the current weights, then e = s*e + (1-s)*w."""
    ema = {k: v.clone() for k, v in after_batch[0].items()}
    for weights in after_batch:
        for k in ema:
            ema[k] = ema[k] * smoothing + weights[k] * (1.0 - smoothing)
    return ema


def unet_of(model):
    return {k: v.detach() for k, v in model.unet.named_parameters()}


def test_load_model_gives_ema_and_online_weights(trained, demo_dir):
    online_expected = trained["after_batch"][-1]
    ema_expected = expected_ema(trained["after_batch"])
    assert len(trained["after_batch"]) == 4
    assert any(not torch.allclose(online_expected[k], ema_expected[k]) for k in online_expected)

    ema_model = load_model(trained["checkpoint"], ema=True)
    online_model = load_model(trained["checkpoint"], ema=False)
    for name, value in unet_of(ema_model).items():
        torch.testing.assert_close(value, ema_expected[name], rtol=0, atol=1e-6, msg=name)
    for name, value in unet_of(online_model).items():
        torch.testing.assert_close(value, online_expected[name], rtol=0, atol=0, msg=name)
    # frozen parts come back exactly as the demo saved them
    from diffusers import AutoencoderKL

    saved_vae = AutoencoderKL.from_pretrained(os.path.join(demo_dir, "models", "vae"))
    for (name, a), (_, b) in zip(ema_model.vae.state_dict().items(), saved_vae.state_dict().items()):
        assert torch.equal(a, b), name


def test_ema_flag_read_from_checkpoint_not_assumed(trained, tmp_path):
    """A checkpoint saved with the online weights in the model (ema_weights_active False, EMA names with DDP's
    `module.` prefix) loads the same weights for each choice."""
    saved = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    state = saved["state"]
    ema_state = dict(state["algorithms"])["EMA"]
    assert ema_state["ema_weights_active"] is True  # Composer swapped EMA in at the checkpoint event
    stored = ema_state["ema_model"]["named_parameters_dict"]
    for key, online in list(stored.items()):
        stored[key], state["model"][key] = state["model"][key], online
    ema_state["ema_weights_active"] = False
    # EMA copies names from the wrapped model under DDP; those come back without the prefix
    ema_state["ema_model"]["named_parameters_dict"] = {"module." + k: v for k, v in stored.items()}
    flipped = tmp_path / "checkpoints" / "flipped.pt"
    flipped.parent.mkdir()
    torch.save(saved, flipped)
    (tmp_path / "checkpoints" / "train_config.yaml").write_text(
        open(os.path.join(os.path.dirname(trained["checkpoint"]), "train_config.yaml")).read())
    for ema in (True, False):
        a, b = unet_of(load_model(trained["checkpoint"], ema=ema)), unet_of(load_model(str(flipped), ema=ema))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_required_but_absent_is_a_clear_error(trained, tmp_path):
    saved = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    saved["state"]["algorithms"] = [a for a in saved["state"]["algorithms"] if a[0] != "EMA"]
    path = tmp_path / "no_ema.pt"
    torch.save(saved, path)
    config = os.path.join(os.path.dirname(trained["checkpoint"]), "train_config.yaml")
    with pytest.raises(ModelLoadError, match="no EMA weights"):
        load_model(str(path), ema=True, config=config)
    model = load_model(str(path), ema=False, config=config)  # the weights in state["model"] (here: EMA's)
    assert load_model(str(path), ema=None, config=config) is not None
    assert all(torch.equal(a, b) for a, b in zip(unet_of(model).values(), unet_of(load_model(trained["checkpoint"])).values()))


def test_diffusers_pipeline_draws_the_same_images(trained, exported):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    ours = load_model(trained["checkpoint"], ema=True)
    pipe = StableDiffusionPipeline.from_pretrained(exported, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    for sampler in ("ddim", "euler"):
        if sampler == "euler":
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        expected = ours.generate(PROMPTS, num_inference_steps=3, guidance_scale=4.0, sampler=sampler, seed=7)
        got = pipe(PROMPTS, num_inference_steps=3, guidance_scale=4.0, output_type="pt",
                   generator=[torch.Generator().manual_seed(7 + i) for i in range(len(PROMPTS))]).images
        assert got.shape == expected.shape == (2, 3, 32, 32)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    other_seed = ours.generate(PROMPTS, num_inference_steps=3, guidance_scale=4.0, sampler="euler", seed=8)
    assert (other_seed - expected).abs().max() > 1e-2  # the comparison above is not vacuous
    # the folder also loads back into the project's own class, same images
    again = load_model(exported).generate(PROMPTS, num_inference_steps=3, guidance_scale=4.0, sampler="euler", seed=7)
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-5)


def test_export_folder_contents_and_card(trained, exported):
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "tokenizer/vocab.json", "scheduler/scheduler_config.json",
                 "model_index.json", "README.md", "ATTRIBUTION.tsv", "ATTRIBUTION.md", "train_config.yaml"):
        assert os.path.isfile(os.path.join(exported, part)), part
    assert not os.path.exists(exported + ".partial")
    record = json.load(open(os.path.join(exported, "commoncanvas_export.json")))
    assert record["weights"] == "ema" and record["batches"] == 4 and record["split"] == "public-domain"
    card = open(os.path.join(exported, "README.md")).read()
    assert "Data split: public-domain" in card and "| CC0 | 256 |" in card
    assert "4 batches (32 samples" in card and "UNet layout: `tiny`" in card
    n_unet = sum(p.numel() for p in load_model(trained["checkpoint"]).unet.parameters())
    assert f"({n_unet:,})" in card
    assert len(open(os.path.join(exported, "ATTRIBUTION.tsv")).read().splitlines()) == 257  # header + 256 images


def test_no_ema_export_differs_and_fp16_loads(trained, exported, tmp_path):
    online_dir, fp16_dir = str(tmp_path / "online"), str(tmp_path / "fp16")
    assert export_main([trained["checkpoint"], online_dir, "--no-ema"]) == 0
    assert export_main([trained["checkpoint"], fp16_dir, "--dtype", "fp16"]) == 0
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    ema_w, online_w, fp16_w = (load_file(os.path.join(d, unet_file)) for d in (exported, online_dir, fp16_dir))
    assert any(not torch.equal(ema_w[k], online_w[k]) for k in ema_w)
    online_expected = trained["after_batch"][-1]
    torch.testing.assert_close(online_w["conv_in.weight"], online_expected["conv_in.weight"], rtol=0, atol=0)
    assert json.load(open(os.path.join(online_dir, "commoncanvas_export.json")))["weights"] == "online"
    assert "Weights: online" in open(os.path.join(online_dir, "README.md")).read()

    assert all(v.dtype == torch.float16 for v in fp16_w.values())
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(fp16_dir, torch_dtype=torch.float16, local_files_only=True)
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16
    for k, v in pipe.unet.state_dict().items():
        torch.testing.assert_close(v, ema_w[k].half(), rtol=0, atol=0)
    # an fp16 folder still samples in our class (loaded as fp32) close to the fp32 export
    a = load_model(fp16_dir).generate(PROMPTS[:1], num_inference_steps=2, guidance_scale=4.0, seed=0)
    b = load_model(exported).generate(PROMPTS[:1], num_inference_steps=2, guidance_scale=4.0, seed=0)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-2)


# ---- licenses -> model card --------------------------------------------------------------------------------
def write_license_shards(out_dir, licenses):
    """Tiny MDS shards with the fetch stage's columns; one image per entry of `licenses`."""
    from PIL import Image

    with MDSWriter(out=str(out_dir), columns=schema.FETCH_COLUMNS) as writer:
        for i, lic in enumerate(licenses):
            writer.write({
                schema.IMAGE: Image.new("RGB", (8, 8), (i * 40 % 255, 0, 0)), "photo_id": f"{out_dir.name}-{i}",
                "title": f"photo {i}", "description": "", "author_name": f"author {i}", "author_id": str(i),
                "page_url": f"https://example.org/{i}", "download_url": "", "license": lic, "license_name": lic,
                "license_url": f"https://creativecommons.org/licenses/{lic.lower()[3:]}/2.0/", "orig_width": 8,
                "orig_height": 8, "sha256": hashlib.sha256(f"{out_dir}{i}".encode()).hexdigest(),
            })
    return str(out_dir)


@pytest.mark.parametrize("licenses, split", [
    ({"CC-BY": 3, "CC-BY-SA": 1}, "C"),
    ({"CC-BY": 3}, "C"),
    ({"CC-BY": 3, "CC-BY-NC": 1}, "NC"),
    ({"CC-BY-NC-SA": 2, "CC0": 1}, "NC"),
    ({"CC0": 5, "PDM": 1}, "public-domain"),
    ({"CC-BY": 3, "CC-BY-ND": 1}, "uncleared"),
    ({"CC-BY": 3, "UNKNOWN": 1}, "uncleared"),
])
def test_data_split_rules(licenses, split):
    assert data_split(licenses).name == split


def test_card_says_c_or_nc_from_the_shards(trained, tmp_path):
    c_shards = write_license_shards(tmp_path / "c", ["CC-BY", "CC-BY-SA", "CC-BY"])
    nc_shards = write_license_shards(tmp_path / "nc", ["CC-BY-NC", "CC-BY-NC-SA"])
    c_dir = export_pipeline(trained["checkpoint"], str(tmp_path / "c_model"), shards=[c_shards])
    card = open(os.path.join(c_dir, "README.md")).read()
    assert "Data split: C." in card and "commercial use is allowed" in card and "share-alike" in card
    assert "| CC-BY | 2 |" in card and "| CC-BY-SA | 1 |" in card and "3 distinct training images" in card

    both = export_pipeline(trained["checkpoint"], str(tmp_path / "nc_model"), shards=[c_shards, nc_shards],
                           attribution_max_rows=4)
    card = open(os.path.join(both, "README.md")).read()
    assert "Data split: NC." in card and "non-commercial use only" in card and "| CC-BY-NC | 1 |" in card
    # 5 rows > 4: the list lives beside the folder, a pointer with its checksum inside it
    assert not os.path.exists(os.path.join(both, "ATTRIBUTION.tsv"))
    pointer = open(os.path.join(both, "ATTRIBUTION.txt")).read()
    tsv = os.path.join(str(tmp_path / "nc_model") + "-attribution", "ATTRIBUTION.tsv")
    assert hashlib.sha256(open(tsv, "rb").read()).hexdigest() in pointer
    assert len(open(tsv).read().splitlines()) == 6
    assert json.load(open(os.path.join(both, "attribution_counts.json")))["images"] == 5


def test_uncleared_licenses_refused_unless_allowed(trained, tmp_path, capsys):
    shards = write_license_shards(tmp_path / "nd", ["CC-BY", "CC-BY-ND"])
    out = str(tmp_path / "model")
    assert export_main([trained["checkpoint"], out, "--shards", shards]) == 2
    assert "CC-BY-ND" in capsys.readouterr().err and not os.path.exists(out) and not os.path.exists(out + ".partial")
    export_pipeline(trained["checkpoint"], out, shards=[shards], allow_uncleared_licenses=True)
    assert "Data split: uncleared" in open(os.path.join(out, "README.md")).read()


def test_eval_results_in_card(trained, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"n_reference": 10, "per_scale": {
        "2": {"guidance_scale": 2.0, "fid": 31.25, "clip_score": 0.25, "kid": {"mean": 0.01, "std": 0.001}, "n": 10},
        "7.5": {"guidance_scale": 7.5, "fid": 28.5, "clip_score": 0.3, "kid": {"mean": 0.02, "std": 0.002}, "n": 10}}}))
    out = export_pipeline(trained["checkpoint"], str(tmp_path / "model"), eval_results=[str(results)])
    card = open(os.path.join(out, "README.md")).read()
    assert "| 7.5 | 28.5 |" in card and "| 2 | 31.25 |" in card


# ---- other layouts, structurally (tiny overrides: never the real-size model) -------------------------------
@pytest.mark.parametrize("layout, overrides", [
    ("sdxl_size", {"model.unet_overrides.block_out_channels": "[32,64,64]",
                   "model.unet_overrides.attention_head_dim": "[4,8,8]",
                   "model.unet_overrides.transformer_layers_per_block": "[1,2,2]",
                   "model.prediction_type": "epsilon", "model.zero_terminal_snr": "false"}),
    ("sd2", {"model.unet_overrides.block_out_channels": "[32,32,64,64]",
             "model.unet_overrides.attention_head_dim": "[4,4,8,8]",
             "model.prediction_type": "v_prediction", "model.zero_terminal_snr": "true"}),
])
def test_other_layouts_export_to_stable_diffusion_pipeline(demo_dir, tmp_path, layout, overrides):
    from diffusers import StableDiffusionPipeline

    from diffusion.models.unet_configs import UNET_CONFIGS

    common = {"model.unet": layout, "model.unet_overrides.cross_attention_dim": 32,
              "model.unet_overrides.norm_num_groups": 8, "model.unet_overrides.layers_per_block": 1}
    checkpoint, _ = train_demo(demo_dir, str(tmp_path / "run"), batches=2, **common, **overrides)
    out = export_pipeline(checkpoint, str(tmp_path / "model"))
    unet_config = json.load(open(os.path.join(out, "unet", "config.json")))
    assert unet_config["down_block_types"] == UNET_CONFIGS[layout]["down_block_types"]
    assert unet_config["addition_embed_type"] is None
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if layout == "sd2" else "epsilon")
    got = pipe(PROMPTS[:1], num_inference_steps=2, guidance_scale=3.0, output_type="pt",
               generator=[torch.Generator().manual_seed(0)]).images
    expected = load_model(checkpoint).generate(PROMPTS[:1], num_inference_steps=2, guidance_scale=3.0, seed=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    if layout == "sdxl_size":
        assert "StableDiffusionPipeline, not StableDiffusionXLPipeline" in open(os.path.join(out, "README.md")).read()


# ---- bad inputs: one line, non-zero exit -------------------------------------------------------------------
def test_weights_that_do_not_fit_the_config_name_the_key(trained, tmp_path, capsys):
    other = load_config(os.path.join(os.path.dirname(trained["checkpoint"]), "train_config.yaml"),
                        ["model.unet_overrides.block_out_channels=[16,32]"], TrainConfig)
    from omegaconf import OmegaConf

    config = tmp_path / "other.yaml"
    OmegaConf.save(other, config)
    with pytest.raises(ModelLoadError, match=r"unet\.conv_in\.weight checkpoint \(32, 4, 3, 3\) vs model \(16, 4, 3, 3\)"):
        load_checkpoint(trained["checkpoint"], config=str(config))
    assert export_main([trained["checkpoint"], str(tmp_path / "x"), "--config", str(config)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "shape mismatch" in errors[0] and "other.yaml" in errors[0]


def test_missing_files_and_existing_output(trained, exported, tmp_path, capsys):
    assert export_main([str(tmp_path / "nope.pt"), str(tmp_path / "out")]) == 2
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err
    # a checkpoint without its train_config.yaml
    lone = tmp_path / "lone" / "ck.pt"
    lone.parent.mkdir()
    lone.write_bytes(open(trained["checkpoint"], "rb").read())
    assert export_main([str(lone), str(tmp_path / "out")]) == 2
    assert "train_config.yaml: no training config" in capsys.readouterr().err
    # existing output: refused without --overwrite; with it only a previous export is replaced
    before = os.path.getmtime(os.path.join(exported, "README.md"))
    assert export_main([trained["checkpoint"], exported]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(exported, "README.md")) == before
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert export_main([trained["checkpoint"], str(precious), "--overwrite"]) == 2
    assert "not an exported pipeline" in capsys.readouterr().err and (precious / "notes.txt").exists()
    assert export_main([trained["checkpoint"], str(tmp_path / "out"), "--eval-results", str(tmp_path / "no.json")]) == 2
    assert "no.json: no eval results file" in capsys.readouterr().err
