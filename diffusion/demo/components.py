"""Builds the demo's frozen parts offline and saves them as a diffusers-style folder (vae/, text_encoder/,
tokenizer/), so the demo yaml loads them by local path exactly as a real recipe loads SD2's.

The text encoder stays random (its embeddings still tell the prompts apart); the VAE is trained for a
minute on the demo images, because a random frozen VAE decodes latents into noise. Then the demo shards'
latents are precomputed with data_prep.precompute_latents, as the real recipes train from stored latents.
"""
from __future__ import annotations

import argparse
import os

import torch
from tqdm import tqdm
from transformers import CLIPTokenizer

from diffusion.datasets.text_image import build_dataloader
from diffusion.models import tiny


# Small batches and a high learning rate: the flat-coloured shapes need many steps more than big batches.
# 300 x 16 already kept the shape colour of 95% and the background colour of 98% of 96 fresh images
# (diffusion.demo.adherence on reconstructions); the demo trains 400.
def train_vae(shards: str, steps: int = 400, batch_size: int = 16, lr: float = 4e-3, kl_weight: float = 1e-6,
              resolution: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    vae = tiny.tiny_vae()
    loader = build_dataloader(batch_size, tokenizer=_NoTokens(), local=shards, caption_key="caption",
                              resolution=resolution, num_workers=0, shuffle=True, shuffle_seed=seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    progress = tqdm(total=steps, desc="training demo VAE")
    step, loss = 0, torch.tensor(float("nan"))
    while step < steps:
        for batch in loader:
            posterior = vae.encode(batch["image"]).latent_dist
            recon = vae.decode(posterior.sample()).sample
            loss = torch.nn.functional.mse_loss(recon, batch["image"]) + kl_weight * posterior.kl().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if step >= steps:
                break
    progress.close()
    # Unit-variance latents are what the diffusion noise schedule assumes: set scaling_factor from data.
    with torch.no_grad():
        latents = torch.cat([vae.encode(b["image"]).latent_dist.mean for _, b in zip(range(8), loader)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae.eval(), loss.item()


class _NoTokens:
    """Stand-in tokenizer for VAE training, which reads only pixels."""
    model_max_length = 1

    def __call__(self, text, **kwargs):
        return type("T", (), {"input_ids": torch.zeros(1, 1, dtype=torch.long)})()


def build_demo_components(out_dir: str, shards: str, vae_steps: int = 400) -> dict:
    """Writes out_dir/{tokenizer,text_encoder,vae}; skips parts already there (re-runs are cheap)."""
    paths = {name: os.path.join(out_dir, name) for name in ("tokenizer", "text_encoder", "vae")}
    if not os.path.isfile(os.path.join(paths["tokenizer"], "vocab.json")):
        tiny.save_tiny_tokenizer(paths["tokenizer"])
    if not os.path.isfile(os.path.join(paths["text_encoder"], "config.json")):
        torch.manual_seed(0)
        tokenizer = CLIPTokenizer.from_pretrained(paths["tokenizer"])
        tiny.tiny_text_encoder(len(tokenizer), max_positions=tokenizer.model_max_length).save_pretrained(paths["text_encoder"])
    if not os.path.isfile(os.path.join(paths["vae"], "config.json")):
        vae, loss = train_vae(shards, steps=vae_steps)
        vae.save_pretrained(paths["vae"])
        print(f"demo VAE reconstruction loss {loss:.4f}, scaling_factor {vae.config.scaling_factor:.3f}")
    return paths


def precompute_demo_latents(shards: str, models: str, out_dir: str) -> str:
    """The demo shards' VAE and caption latents through the recipes' own stage, which resumes and skips done work."""
    from data_prep import precompute_latents

    precompute_latents.main([shards, out_dir, "--vae", models, "--text-encoder", models, "--tokenizer", models,
                             "--resolutions", "32", "--caption-key", "caption", "--dtype", "fp32", "--drop-image"])
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--shards", required=True, help="demo MDS shards (diffusion.demo.shapes)")
    parser.add_argument("--vae-steps", type=int, default=400)
    args = parser.parse_args(argv)
    print(build_demo_components(args.out_dir, args.shards, args.vae_steps))


if __name__ == "__main__":
    main()
