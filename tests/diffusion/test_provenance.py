"""diffusion.provenance: the watermark's robustness, signed C2PA manifests, `verify`, and the CLIs that mark by default."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from diffusion import provenance
from diffusion.export import export_pipeline
from diffusion.generate import main as generate_main
from diffusion.inference import load_checkpoint, load_model
from diffusion.provenance import Marker, ProvenanceConfig, model_id, prepare_signer, watermark
from diffusion.provenance.manifest import (ASSERTION, TRAINED_ALGORITHMIC_MEDIA, SigningError, load_signer,
                                           manifest_definition, read_manifest)
from diffusion.provenance.verify import main as verify_main
from tests.diffusion.c2pa_certs import write_signing_material
from tests.diffusion.test_export import train_demo

PROMPT = "a red circle on a blue background"


def photo(size):
    """A real photograph that ships with matplotlib (a pinned dependency): natural-image statistics, offline."""
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return np.asarray(Image.open(path).convert("RGB").crop((0, 0, 512, 512)).resize((size, size), Image.BICUBIC))


def jpeg(rgb, quality=75):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def half(rgb):
    return np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 2, rgb.shape[0] // 2), Image.BICUBIC))


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return write_signing_material(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(scope="module")
def exported(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("provenance_run")
    checkpoint, _ = train_demo(demo_dir, str(out), batches=3)
    return checkpoint, export_pipeline(checkpoint, str(out / "pipeline"))


def verify_lines(capsys, *args):
    capsys.readouterr()  # drop what earlier commands printed
    status = verify_main([str(a) for a in args])
    return status, capsys.readouterr().out.strip().splitlines()


# ---- watermark ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [256, 512])
def test_watermark_survives_jpeg_q75_and_half_resize(size):
    rgb = photo(size)
    marked = watermark.embed(rgb, "1a2b3c4d")
    psnr = 10 * np.log10(255 ** 2 / np.mean((marked.astype(float) - rgb) ** 2))
    accuracy = {}
    for edit, image in (("none", marked), ("jpeg75", jpeg(marked)), ("half", half(marked)),
                        ("half+jpeg75", jpeg(half(marked)))):
        decoded = watermark.decode(image)
        accuracy[edit] = decoded.bit_accuracy("1a2b3c4d")
        if edit != "half+jpeg75":  # both edits together are beyond what we promise; reported only
            assert decoded.model_id == "1a2b3c4d", (edit, accuracy)
    print(f"\n{size}px photo: PSNR {psnr:.1f} dB, bit accuracy {accuracy}")
    assert psnr > 40
    assert min(accuracy["jpeg75"], accuracy["half"]) >= 0.95
    unmarked = watermark.decode(jpeg(rgb))
    assert unmarked.model_id is None and unmarked.bit_accuracy("1a2b3c4d") < 0.8


def test_stock_invisible_watermark_decoder_reads_the_mark():
    from imwatermark import WatermarkDecoder

    marked = watermark.embed(photo(256), "0badf00d")
    for image in (marked, jpeg(marked, quality=60)):  # also after an edit, where votes are no longer unanimous
        stock = WatermarkDecoder("bits", watermark.PAYLOAD_BITS).decode(
            np.ascontiguousarray(image[:, :, ::-1]), "dwtDctSvd", scales=watermark.SCALES)
        assert np.array_equal(np.asarray(stock, dtype=np.uint8), watermark._read_bits(image))
    assert watermark.id_from_bits(np.asarray(stock, dtype=np.uint8)) == "0badf00d"


def test_small_images_are_left_unmarked_with_the_reason(material, tmp_path, capsys):
    marker = Marker(ProvenanceConfig(sign_cert=material["chain"], sign_key=material["key"]), "1a2b3c4d", "m",
                    signer=prepare_signer(ProvenanceConfig(sign_cert=material["chain"], sign_key=material["key"])))
    small = photo(256)[::8, ::8]
    marker.save(small, str(tmp_path / "small.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "small.png")), small)  # pixels untouched
    status, (line,) = verify_lines(capsys, tmp_path / "small.png")
    assert status == 0 and "no watermark (image 32x32 is below the watermark's minimum" in line
    with pytest.raises(ValueError, match="below the watermark's minimum"):
        watermark.embed(small, "1a2b3c4d")


# ---- manifests and verify -------------------------------------------------------------------------------------
def test_generated_image_verifies_with_assertions_as_configured(exported, material, tmp_path, capsys):
    checkpoint, folder = exported
    out = tmp_path / "samples"
    args = [folder, "--prompt", PROMPT, "--n", "1", "--steps", "1", "--height", "256", "--width", "256",
            "--out", str(out), "--sign-cert", material["chain"], "--sign-key", material["key"], "--record-prompt"]
    assert generate_main(args) == 0
    record = json.load(open(os.path.join(folder, "provenance.json")))
    # the id is the weights': the same from the folder, from the checkpoint's EMA weights, and in the record
    assert record["model_id"] == model_id(load_model(folder).unet) == model_id(load_checkpoint(checkpoint).model.unet)

    image = out / "p000_s0.png"
    report = read_manifest(str(image), material["ca"])
    assert report.state == "Trusted" and report.source_type == TRAINED_ALGORITHMIC_MEDIA
    generation = report.generation
    assert generation["model_id"] == record["model_id"] and generation["model_name"] == "pipeline"
    assert generation["training_data"] == {"split": record["split"], "license_terms": record["license_terms"]}
    assert record["split"] == "public-domain"  # the demo's shapes are CC0
    assert generation["generator"] == "CommonCanvas recipes" and generation["watermark"]["embedded"] is True
    assert generation["prompt"] == PROMPT and "seed" not in generation  # prompt opted in, seed not

    status, lines = verify_lines(capsys, image, out / "grid.png", "--model", folder, "--trust-anchors", material["ca"])
    assert status == 0, lines
    assert lines[0].startswith(f"{image}: ok; model pipeline id {record['model_id']}, split public-domain, "
                               "signer Test Signer (CommonCanvas tests) (trusted), signature valid, "
                               f"watermark {record['model_id']} (48/48 bits agree)")
    # without a trust list the signature still validates; the signer is reported untrusted
    status, (line,) = verify_lines(capsys, image)
    assert status == 0 and "(untrusted), signature valid" in line
    # after JPEG q75 the manifest is gone but the watermark still names the model
    Image.open(image).convert("RGB").save(tmp_path / "reencoded.jpg", quality=75)
    status, (line,) = verify_lines(capsys, tmp_path / "reencoded.jpg", "--model", folder)
    assert status == 0 and line.endswith(f"ok; no manifest, watermark {record['model_id']} (48/48 bits agree)")


def test_image_of_another_model_fails(exported, material, tmp_path, capsys):
    _, folder = exported
    signer = load_signer(material["chain"], material["key"])
    # watermarked by model 0badf00d, manifest claiming model 1a2b3c4d
    other = Marker(ProvenanceConfig(c2pa=False), "0badf00d", "other")
    png = other.encode(photo(256), "x.png")
    claim = Marker(ProvenanceConfig(), "1a2b3c4d", "claimed").generation_assertion({"embedded": True})
    (tmp_path / "mixed.png").write_bytes(signer.sign(png, "image/png", manifest_definition(claim, "x", "image/png")))
    status, (line,) = verify_lines(capsys, tmp_path / "mixed.png")
    assert status == 1
    assert "FAIL (watermark id 0badf00d is not the manifest's 1a2b3c4d)" in line and "bits disagree" in line
    # an image of another model checked against this export
    (tmp_path / "other.png").write_bytes(png)
    status, (line,) = verify_lines(capsys, tmp_path / "other.png", "--model", folder)
    expected = json.load(open(os.path.join(folder, "provenance.json")))["model_id"]
    assert status == 1 and f"FAIL (made by model 0badf00d, not the expected {expected})" in line


def fix_chunk_crc(png: bytearray, chunk_type: bytes) -> bytes:
    """Recomputes a PNG chunk's CRC after an edit, as a careful forger would (so only C2PA can notice)."""
    import zlib

    at = png.find(chunk_type)
    length = int.from_bytes(png[at - 4:at], "big")
    png[at + 4 + length:at + 8 + length] = zlib.crc32(png[at:at + 4 + length]).to_bytes(4, "big")
    return bytes(png)


def test_edited_manifest_or_pixels_fail(material, tmp_path, capsys):
    cfg = ProvenanceConfig(sign_cert=material["chain"], sign_key=material["key"])
    data = Marker(cfg, "1a2b3c4d", "m", split="C", signer=prepare_signer(cfg)).encode(photo(256), "a.png")
    edited = bytearray(data)
    at = edited.find(b"split")
    edited[at:at + 5] = b"spliT"  # the assertion's bytes no longer match their hash in the signed claim
    (tmp_path / "manifest.png").write_bytes(fix_chunk_crc(edited, b"caBX"))
    status, (line,) = verify_lines(capsys, tmp_path / "manifest.png")
    assert status == 1 and "FAIL (manifest fails validation: assertion.hashedURI.mismatch" in line

    pixels = np.asarray(Image.open(io.BytesIO(data))).copy()
    pixels[:8, :8] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    manifest_bytes = data[data.find(b"caBX") - 4:]  # move the signed manifest chunk onto the edited pixels
    end = buffer.getvalue().rfind(b"IEND") - 4
    (tmp_path / "pixels.png").write_bytes(buffer.getvalue()[:end] + manifest_bytes)
    status, (line,) = verify_lines(capsys, tmp_path / "pixels.png")
    assert status == 1 and "FAIL (manifest fails validation" in line


def test_missing_signing_material_is_one_line_naming_the_setting(exported, material, tmp_path, capsys):
    _, folder = exported
    base = [folder, "--prompt", PROMPT, "--n", "1", "--steps", "1", "--out", str(tmp_path / "o")]
    for extra, named in ((["--c2pa"], "set --sign-cert"), (["--sign-cert", material["chain"]], "set --sign-key"),
                         (["--sign-cert", str(tmp_path / "nope.pem"), "--sign-key", material["key"]],
                          f"--sign-cert={tmp_path / 'nope.pem'}: no such file")):
        assert generate_main(base + extra) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and named in errors[0], errors
    assert not os.path.exists(tmp_path / "o")  # failed before the model load, nothing written
    with pytest.raises(SigningError, match=r"^C2PA signing needs .*: set provenance.sign_cert$"):
        prepare_signer(ProvenanceConfig(c2pa=True))
    with pytest.raises(SigningError, match="cannot sign with them"):
        load_signer(material["ca"], material["key"])  # the CA's certificate does not belong to the signer's key


def test_defaults_watermark_only_and_no_provenance(exported, tmp_path, capsys):
    _, folder = exported
    base = [folder, "--prompt", PROMPT, "--n", "1", "--steps", "1", "--height", "256", "--width", "256"]
    provenance._noticed.clear()  # the notice is printed once per process
    assert generate_main(base + ["--out", str(tmp_path / "default")]) == 0
    (notice,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert "no C2PA manifest: set --sign-cert and --sign-key" in notice
    status, (line,) = verify_lines(capsys, tmp_path / "default" / "p000_s0.png")
    assert status == 0 and "ok; no manifest, watermark" in line
    assert generate_main(base + ["--out", str(tmp_path / "plain"), "--no-provenance"]) == 0
    status, (line,) = verify_lines(capsys, tmp_path / "plain" / "p000_s0.png")
    assert status == 1 and "FAIL (no provenance found)" in line
    settings = json.load(open(tmp_path / "plain" / "generate.json"))
    assert settings["provenance"] == {"enabled": False}


def test_export_records_the_id_and_the_card_says_how_to_verify(exported):
    _, folder = exported
    record = json.load(open(os.path.join(folder, "provenance.json")))
    assert len(record["model_id"]) == 8 and record["defaults"]["record_prompt"] is False
    card = open(os.path.join(folder, "README.md")).read()
    assert "## Provenance of generated images" in card and f"**`{record['model_id']}`**" in card
    assert f"python -m diffusion.provenance verify IMAGE.png --model {os.path.basename(folder)}" in card


# ---- eval images and training sample grids --------------------------------------------------------------------
def test_eval_images_marked_unless_the_yaml_turns_it_off(exported, material, tmp_path, capsys):
    from eval.fid_clip_job import main as fid_main
    from eval.generate_images import generate_images

    _, folder = exported
    prompts = [("7", PROMPT), ("9", "a white triangle on a green background")]
    cfg = ProvenanceConfig(sign_cert=material["chain"], sign_key=material["key"], record_seed=True)
    folders = generate_images(folder, prompts, str(tmp_path / "gen"), [3.0], num_inference_steps=1, height=256,
                              width=256, seed=10, device="cpu", provenance=cfg)
    status, lines = verify_lines(capsys, *(os.path.join(folders[3.0], f"{i}.png") for i in ("7", "9")),
                                 "--model", folder)
    assert status == 0 and all(": ok; model pipeline id" in line and "48/48 bits agree" in line for line in lines)
    assert read_manifest(os.path.join(folders[3.0], "9.png")).generation["seed"] == 11  # seed + prompt index

    off = generate_images(folder, prompts[:1], str(tmp_path / "off"), [3.0], num_inference_steps=1, height=256,
                          width=256, device="cpu", provenance=ProvenanceConfig(enabled=False))
    status, (line,) = verify_lines(capsys, os.path.join(off[3.0], "7.png"))
    assert status == 1 and "no provenance found" in line

    # the eval yaml: C2PA required without material stops the job with one line naming the yaml key
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"id": "1", "prompt": PROMPT}) + "\n")
    yaml = os.path.join(os.path.dirname(__file__), "..", "..", "yamls", "eval-fid-clip.yaml")
    status = fid_main([yaml, f"model={folder}", "provenance.c2pa=true", "coco_mds=null", "inception_path=random-tiny",
                       "clip_path=random-tiny", f"prompts_file={tmp_path / 'prompts.jsonl'}",
                       f"reference_dir={tmp_path}", f"out_dir={tmp_path / 'job'}", "device=cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and errors[0].endswith("set provenance.sign_cert"), errors


def test_sample_grids_carry_the_id_of_the_weights_sampled(demo_dir, material, tmp_path, capsys):
    from diffusion.config import load_config
    from diffusion.train import TrainConfig, build_trainer
    from tests.diffusion.conftest import REPO, demo_overrides

    overrides = [o for o in demo_overrides(demo_dir, tmp_path, **{"trainer.max_duration": "2ba"})
                 if not o.startswith("callbacks.sample_images")]
    overrides += ["callbacks.sample_images.num_inference_steps=1", "callbacks.sample_images.seeds=[0,1]",
                  "callbacks.sample_images.height=128", "callbacks.sample_images.width=128",  # grid 256x512
                  f"callbacks.sample_images.provenance.sign_cert={material['chain']}",
                  f"callbacks.sample_images.provenance.sign_key={material['key']}"]
    trainer = build_trainer(load_config(os.path.join(REPO, "yamls", "demo-cpu.yaml"), overrides, TrainConfig))
    trainer.fit()
    trainer.close()
    grids = [str(tmp_path / "checkpoints" / "samples" / f"samples_ba000000{b}.png") for b in (0, 2)]
    status, lines = verify_lines(capsys, *grids)
    assert status == 0 and all("signature valid" in line and "48/48 bits agree" in line for line in lines), lines
    first, last = (read_manifest(g).generation["model_id"] for g in grids)
    assert first != last  # two batches of training changed the (EMA) weights, and so the id

