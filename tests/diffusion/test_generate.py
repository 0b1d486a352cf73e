"""python -m diffusion.generate on an exported folder and on a checkpoint: files, seeds, resume, errors."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.generate import main as generate_main
from diffusion.inference import load_model

A, B = "a red circle on a blue background", "a white triangle on a green background"


@pytest.fixture
def model_paths(trained, exported):
    """The session's trained demo checkpoint and its export (read-only)."""
    return trained["checkpoint"], exported


def png(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def as_uint8(images):
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.int16)


def errors_of(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_writes_one_png_per_prompt_and_seed_and_a_grid(model_paths, tmp_path):
    _, folder = model_paths
    out = tmp_path / "samples"
    args = [folder, "--prompt", A, "--prompt", B, "--n", "2", "--steps", "2", "--guidance", "4", "--seed", "3",
            "--out", str(out), "--batch-size", "3"]
    assert generate_main(args) == 0
    names = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert names == ["grid.png", "p000_s3.png", "p000_s4.png", "p001_s3.png", "p001_s4.png"]
    assert Image.open(out / "grid.png").size == (2 * 32, 2 * 32)
    # each file is sample `seed + i` of its prompt, as StableDiffusion.generate draws it
    expected = as_uint8(load_model(folder).generate([A, B], num_inference_steps=2, guidance_scale=4.0, seed=[4, 3]))
    assert np.abs(png(out / "p000_s4.png") - expected[0]).max() <= 1
    assert np.abs(png(out / "p001_s3.png") - expected[1]).max() <= 1
    assert np.abs(png(out / "p000_s3.png") - png(out / "p000_s4.png")).max() > 10  # seeds differ

    # resume: only the missing image is made again, the same as before
    before = png(out / "p001_s4.png")
    os.remove(out / "p001_s4.png")
    kept = os.path.getmtime(out / "p000_s3.png")
    assert generate_main(args) == 0
    assert os.path.getmtime(out / "p000_s3.png") == kept
    assert np.abs(png(out / "p001_s4.png") - before).max() <= 1


def test_other_settings_refused_unless_overwrite(model_paths, tmp_path, capsys):
    _, folder = model_paths
    out = str(tmp_path / "samples")
    base = [folder, "--prompt", A, "--n", "1", "--steps", "2", "--out", out]
    assert generate_main(base) == 0
    first = png(os.path.join(out, "p000_s0.png"))
    assert generate_main(base + ["--negative-prompt", "a red circle"]) == 2
    (error,) = errors_of(capsys)
    assert "negative_prompts" in error and "--overwrite" in error
    assert generate_main(base + ["--negative-prompt", "a red circle", "--overwrite"]) == 0
    assert np.abs(png(os.path.join(out, "p000_s0.png")) - first).max() > 10  # the negative prompt steers it


def test_checkpoint_input_ema_by_default_and_no_ema(model_paths, tmp_path):
    checkpoint, folder = model_paths
    common = ["--prompt", A, "--n", "1", "--steps", "2", "--sampler", "euler"]
    for name, extra in (("folder", [folder]), ("ema", [checkpoint]), ("online", [checkpoint, "--no-ema"])):
        assert generate_main(extra + common + ["--out", str(tmp_path / name)]) == 0
    folder_png, ema_png, online_png = (png(tmp_path / n / "p000_s0.png") for n in ("folder", "ema", "online"))
    assert np.abs(ema_png - folder_png).max() <= 1  # the folder holds the EMA weights
    ema_model, online_model = load_model(checkpoint, ema=True), load_model(checkpoint, ema=False)
    assert any(not torch.equal(a, b) for a, b in zip(ema_model.unet.parameters(), online_model.unet.parameters()))
    expected = as_uint8(online_model.generate([A], num_inference_steps=2, sampler="euler", guidance_scale=7.0))
    assert np.abs(online_png - expected[0]).max() <= 1


@pytest.mark.parametrize("extra, message", [
    (["--height", "30"], "--height 30 is not a positive multiple of 8"),
    (["--negative-prompt", "x", "--negative-prompt", "y", "--negative-prompt", "z"], "one per prompt"),
    (["--n", "0"], "at least 1"),
    (["--no-ema"], "holds the ema weights"),
])
def test_bad_inputs_one_error_line(model_paths, tmp_path, capsys, extra, message):
    _, folder = model_paths
    assert generate_main([folder, "--prompt", A, "--prompt", B, "--steps", "1", "--out", str(tmp_path / "o"), *extra]) == 2
    (error,) = errors_of(capsys)
    assert message in error


def test_missing_model_and_missing_gpu(tmp_path, capsys):
    assert generate_main([str(tmp_path / "nowhere"), "--prompt", A]) == 2
    assert "nowhere: no such checkpoint file or model folder" in errors_of(capsys)[0]
    if not torch.cuda.is_available():
        assert generate_main([str(tmp_path), "--prompt", A, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in errors_of(capsys)[0]


@pytest.mark.gpu
def test_gpu_matches_cpu(model_paths, tmp_path):
    _, folder = model_paths
    for device in ("cpu", "cuda"):
        assert generate_main([folder, "--prompt", A, "--n", "2", "--steps", "3", "--device", device,
                              "--out", str(tmp_path / device)]) == 0
    for name in ("p000_s0.png", "p000_s1.png"):
        assert np.abs(png(tmp_path / "cpu" / name) - png(tmp_path / "cuda" / name)).max() <= 3
