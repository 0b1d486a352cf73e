"""The README.md model card of an exported pipeline: architecture, training data licenses and what they allow.

The data split is decided from the licenses actually counted in the training shards (the attribution
pass over them), never from the recipe's name:
  * any CC-BY-NC / CC-BY-NC-SA image -> NC: non-commercial use only;
  * only CC-BY / CC-BY-SA (public-domain CC0/PDM may be mixed in) -> C: commercial use allowed, subject to
    the attribution (and, for CC-BY-SA, share-alike) terms of the images;
  * only CC0 / PDM (the CPU demo's procedurally drawn images) -> public-domain data, no conditions;
  * any other license (NoDerivs, All Rights Reserved, UNKNOWN, ...) belongs to no split -> "uncleared":
    the export refuses it unless told otherwise, and the card says so in its first lines.
This card states facts about the data; it is not legal advice.
"""
from __future__ import annotations

import dataclasses
import json
import os

from data_prep.licenses import PUBLIC_DOMAIN, SPLITS, License

CARD_FILE = "README.md"
NC_ONLY = SPLITS["NC"] - SPLITS["C"]


@dataclasses.dataclass
class DataSplit:
    name: str  # "C" | "NC" | "public-domain" | "uncleared"
    summary: str  # one sentence on what the licenses allow
    uncleared: dict  # license -> images, for licenses no split admits


def data_split(per_license: dict[str, int]) -> DataSplit:
    present = {lic: n for lic, n in per_license.items() if n}
    if not present:
        raise ValueError("no training images counted: cannot say which licenses the model was trained on")
    known = {str(x) for x in SPLITS["NC"] | PUBLIC_DOMAIN}
    uncleared = {lic: n for lic, n in present.items() if lic not in known}
    names = set(present)
    if uncleared:
        return DataSplit(
            "uncleared",
            f"Some training images are under licenses that no CommonCanvas split admits ({_list(uncleared)}): "
            "the terms of use of this model are NOT cleared. Do not distribute it before resolving them.",
            uncleared,
        )
    if names & {str(x) for x in NC_ONLY}:
        return DataSplit(
            "NC",
            "NC: trained on images that include NonCommercial licenses (CC-BY-NC / CC-BY-NC-SA), so the model "
            "is for **non-commercial use only**, with attribution to the image authors (and share-alike where "
            "CC-BY-NC-SA applies).",
            {},
        )
    if names & {str(x) for x in SPLITS["C"]}:
        sa = " and the share-alike terms of the CC-BY-SA images" if str(License.CC_BY_SA) in names else ""
        return DataSplit(
            "C",
            f"C: trained only on images under CC-BY / CC-BY-SA{' (plus public-domain images)' if names & {str(x) for x in PUBLIC_DOMAIN} else ''}, "
            f"so **commercial use is allowed**, subject to the attribution terms{sa} of the images.",
            {},
        )
    return DataSplit(
        "public-domain",
        "Trained only on public-domain-marked images (CC0 / Public Domain Mark), e.g. the CPU demo's "
        "procedurally drawn shapes: the data imposes no license conditions.",
        {},
    )


def _list(counts: dict) -> str:
    return ", ".join(f"{lic}: {n}" for lic, n in sorted(counts.items()))


def _fmt_params(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return f"{n:,}"


def load_eval_results(paths: list[str]) -> list[tuple[str, dict]]:
    results = []
    for path in paths or []:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no eval results file")
        try:
            with open(path) as f:
                results.append((path, json.load(f)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
    return results


def _eval_section(results: list[tuple[str, dict]]) -> list[str]:
    if not results:
        return ["No evaluation results were given to the export (`--eval-results`)."]
    lines = []
    for path, data in results:
        lines.append(f"From `{os.path.basename(path)}`:")
        lines.append("")
        if data.get("warning"):
            lines += [f"> {data['warning']}", ""]
        per_scale = data.get("per_scale")
        if isinstance(per_scale, dict) and per_scale:  # eval.results format (FID/KID/CLIP per guidance scale)
            keys = [k for k in ("fid", "kid", "clip_fid", "clip_score", "n") if any(k in r for r in per_scale.values())]
            lines.append("| guidance | " + " | ".join(keys) + " |")
            lines.append("|---" * (len(keys) + 1) + "|")
            for scale, row in sorted(per_scale.items(), key=lambda kv: float(kv[0])):
                cells = [_cell(row.get(k)) for k in keys]
                lines.append(f"| {scale} | " + " | ".join(cells) + " |")
        else:  # any other results JSON: its top-level numbers
            scalars = {k: v for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
            lines += [f"- {k}: {_cell(v)}" for k, v in scalars.items()] or ["(no scalar results)"]
        lines.append("")
    return lines


def _cell(value) -> str:
    if isinstance(value, dict):  # e.g. KID {"mean": .., "std": ..}
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _provenance_section(record: dict | None, name: str) -> list[str]:
    if not record:
        return []
    return [
        "## Provenance of generated images",
        "",
        f"Images made with `python -m diffusion.generate` or the eval jobs carry an invisible watermark holding this "
        f"model's id **`{record['model_id']}`** ({record['watermark']['method']}; images of at least 256x256 pixels; "
        "it survives JPEG re-encoding at quality 75 and a 0.5x resize), and, when a signing certificate and key are "
        f"configured, a signed C2PA manifest (Content Credentials) declaring `trainedAlgorithmicMedia`, the "
        f"generator ({record['c2pa']['generator']}), this model and its training-data split ({record['split']}) "
        "with the license terms above. Prompts and seeds go into the manifest only when asked (`--record-prompt`, "
        "`--record-seed`); `--no-provenance` turns marking off. Verify an image with:",
        "",
        "```bash",
        f"python -m diffusion.provenance verify IMAGE.png --model {name}   # [--trust-anchors CA.pem]",
        "```",
        "",
        "Images from the diffusers pipeline directly are not marked. Details: `provenance.json` in this folder.",
        "",
    ]


def render_model_card(info: dict) -> str:
    """`info` keys: name, split (DataSplit), per_license, images, architecture (dict), training (dict),
    attribution (text line), eval_results (list of (path, json)), weights, dtype, provenance (provenance.json)."""
    split: DataSplit = info["split"]
    arch, training = info["architecture"], info["training"]
    tags = ["text-to-image", "diffusers", "commoncanvas", "creative-commons"]
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "license: other  # the training images' licenses govern use; see 'Training data'",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
        "",
        f"# {info['name']}",
        "",
        f"**Data split: {split.name}.** {split.summary}",
        "",
        "A latent text-to-image diffusion model trained from scratch with the CommonCanvas recipes "
        "(arXiv 2310.16825) on Creative-Commons images only. This card states facts about the training "
        "data; it is not legal advice.",
        "",
        "## Use",
        "",
        "```python",
        f"from diffusers import {arch.get('pipeline_class', 'StableDiffusionPipeline')}",
        f"pipe = {arch.get('pipeline_class', 'StableDiffusionPipeline')}.from_pretrained(\"{info['name']}\")",
        f"image = pipe(\"a lighthouse at dusk\", height={arch['resolution']}, width={arch['resolution']}).images[0]",
        "```",
        "",
        f"or `python -m diffusion.generate {info['name']} --prompt \"...\"`. The scheduler saved with the "
        f"pipeline is {arch['scheduler']} built from the training noise schedule, so prediction type and betas "
        "match training; any diffusers scheduler `from_config(pipe.scheduler.config)` works too.",
        "",
        "## Architecture",
        "",
        f"- UNet layout: `{arch['unet_layout']}` — blocks {arch['down_blocks']}, channels {arch['block_out_channels']}, "
        f"{arch['layers_per_block']} layer(s) per block, transformer layers {arch['transformer_layers']}, "
        f"cross-attention dim {arch['cross_attention_dim']}",
        f"- Parameters: UNet {_fmt_params(arch['params']['unet'])}, VAE {_fmt_params(arch['params']['vae'])}, "
        f"text encoder {_fmt_params(arch['params']['text_encoder'])}",
        f"- Training resolution: {arch['resolution']}px ({arch['latent_size']}x{arch['latent_size']} latents, "
        f"VAE downsampling x{arch['vae_factor']})",
        f"- Noise schedule: {arch['noise_schedule']}; prediction type `{arch['prediction_type']}`",
        f"- Weights: {info['weights']} ({'exponential moving average' if info['weights'] == 'ema' else 'online, not averaged'}), "
        f"saved as {info['dtype']} safetensors",
    ]
    if arch.get("note"):
        lines.append(f"- {arch['note']}")
    lines += [
        "",
        "## Training",
        "",
        f"- Steps: {training['batches']:,} batches ({training['samples']:,} samples, {training['epochs']} epoch(s) completed)",
        f"- Global batch size: {training['global_batch']}; optimizer lr {training['lr']}",
        f"- Checkpoint: `{training['checkpoint']}`; run name `{training['run_name']}`",
        "- Full training config: `train_config.yaml` in this folder",
        "",
        "## Training data",
        "",
        f"{info['images']:,} distinct training images, counted from the training shards:",
        "",
        "| License | Images |",
        "|---|---|",
        *[f"| {lic} | {n:,} |" for lic, n in sorted(info["per_license"].items())],
        "",
        info["attribution"],
        "",
        *_provenance_section(info.get("provenance"), info["name"]),
        "## Evaluation",
        "",
        *_eval_section(info.get("eval_results") or []),
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_model_card(out_dir: str, info: dict) -> str:
    path = os.path.join(out_dir, CARD_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_model_card(info))
    return path
