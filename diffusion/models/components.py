"""Loads the frozen parts of the model (VAE, text encoder, tokenizer) from a hub name or a local folder.

A yaml gives each as `name_or_path` (+ `subfolder`, as in a diffusers pipeline folder). The special value
`tiny` builds a small randomly initialised one offline: for tests and the CPU demo only, never for a
real run. Paths are checked up front so a typo fails with the key and path named, not deep in a hub call.
"""
from __future__ import annotations

import os
import tempfile

from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from diffusion.models import tiny

TINY = "tiny"


def _check_local(key: str, name_or_path: str, subfolder: str | None) -> None:
    looks_local = name_or_path.startswith((".", "/", "~")) or os.path.isdir(name_or_path)
    if looks_local:
        path = os.path.join(os.path.expanduser(name_or_path), subfolder or "")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{key}: no folder at {path}")


def load_tokenizer(name_or_path: str, subfolder: str | None = "tokenizer", key: str = "model.tokenizer") -> CLIPTokenizer:
    if name_or_path == TINY:
        return CLIPTokenizer.from_pretrained(tiny.save_tiny_tokenizer(tempfile.mkdtemp(prefix="tiny_tok_")))
    _check_local(key, name_or_path, subfolder)
    return CLIPTokenizer.from_pretrained(name_or_path, subfolder=subfolder or "")


def load_text_encoder(name_or_path: str, subfolder: str | None = "text_encoder", tokenizer=None, hidden_size: int = 32):
    if name_or_path == TINY:
        return tiny.tiny_text_encoder(len(tokenizer), hidden_size=hidden_size, max_positions=tokenizer.model_max_length)
    _check_local("model.text_encoder", name_or_path, subfolder)
    return CLIPTextModel.from_pretrained(name_or_path, subfolder=subfolder or "")


def load_text_encoder_with_projection(name_or_path: str, subfolder: str | None = "text_encoder_2", tokenizer=None,
                                      hidden_size: int = 32) -> CLIPTextModelWithProjection:
    """SDXL's second text encoder (`model.text_encoder_2`): hidden states and a projected pooled embedding."""
    if name_or_path == TINY:
        return tiny.tiny_text_encoder_with_projection(len(tokenizer), hidden_size=hidden_size,
                                                      max_positions=tokenizer.model_max_length)
    _check_local("model.text_encoder_2", name_or_path, subfolder)
    return CLIPTextModelWithProjection.from_pretrained(name_or_path, subfolder=subfolder or "")


def load_vae(name_or_path: str, subfolder: str | None = "vae") -> AutoencoderKL:
    if name_or_path == TINY:
        return tiny.tiny_vae()
    _check_local("model.vae", name_or_path, subfolder)
    return AutoencoderKL.from_pretrained(name_or_path, subfolder=subfolder or "")
