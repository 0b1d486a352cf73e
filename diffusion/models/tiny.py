"""Tiny randomly initialised VAE, CLIP text encoder and offline tokenizer, for tests and the CPU demo.

No weights can be downloaded on the machines this recipe is tested on, so these are built from config
classes. They run exactly the code path of the real models, only smaller.
"""
from __future__ import annotations

import json
import os

from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# Words the demo captions and the tests use; anything else falls back to character tokens.
DEFAULT_WORDS = (
    "a an the of on in with and small large big tiny photo picture image drawing "
    "red green blue yellow white black orange purple gray pink cyan magenta "
    "circle square triangle ring cross shape background"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's byte-level BPE alphabet: printable bytes map to themselves, the rest to code points >= 256.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def learn_merges(words) -> list[str]:
    """Classic BPE (Sennrich et al. 2016) on the distinct `words`, run until every word is one symbol: each step
    merges the most frequent adjacent pair, ties broken by the pair's text. Written here rather than with the
    `tokenizers` trainer because that one breaks ties in hash order, so two builds learnt different merges and a
    'tiny' model reloaded in another process could tokenize differently."""
    alphabet = _bytes_to_unicode()
    symbols = {w: [alphabet[b] for b in w.encode()] for w in sorted(set(words))}
    for parts in symbols.values():
        parts[-1] += "</w>"
    merges = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for parts in symbols.values():
            for pair in zip(parts, parts[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(" ".join(best))
        for word, parts in symbols.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            symbols[word] = merged


def save_tiny_tokenizer(out_dir: str, words=DEFAULT_WORDS, model_max_length: int = 16) -> str:
    """Writes a CLIPTokenizer folder: CLIP's byte alphabet plus BPE merges learnt on `words` (learn_merges), so
    every listed word becomes one token and anything else still tokenizes, into characters. The same words give
    the same files on every call."""
    os.makedirs(out_dir, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    merges = learn_merges(words)
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges]:
        vocab.setdefault(token, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(out_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"),
        model_max_length=model_max_length, pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _tiny_text_config(vocab_size: int, hidden_size: int, max_positions: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_positions,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, **extra,
    )


def tiny_text_encoder(vocab_size: int, hidden_size: int = 32, max_positions: int = 16) -> CLIPTextModel:
    return CLIPTextModel(_tiny_text_config(vocab_size, hidden_size, max_positions))


def tiny_text_encoder_with_projection(vocab_size: int, hidden_size: int = 32, max_positions: int = 16,
                                      projection_dim: int = 32) -> CLIPTextModelWithProjection:
    """SDXL's second encoder kind (OpenCLIP bigG): hidden states plus a projected pooled embedding."""
    return CLIPTextModelWithProjection(_tiny_text_config(vocab_size, hidden_size, max_positions, projection_dim=projection_dim))


def tiny_vae(latent_channels: int = 4) -> AutoencoderKL:
    """Downsamples by 4 (three blocks); 32px images give 8x8 latents, cheap enough to train on a laptop CPU."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[16, 32, 32], layers_per_block=1, norm_num_groups=8, sample_size=32,
    )
