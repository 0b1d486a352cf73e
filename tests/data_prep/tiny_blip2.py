"""A tiny randomly initialised BLIP-2 (ViT + Q-Former + OPT) and its processor, saved like a hub checkpoint.

Built from config classes because no weights can be downloaded here; `from_pretrained(folder)` then loads
it through exactly the code path a real checkpoint (e.g. Salesforce/blip2-opt-2.7b) takes.
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig,
                          Blip2VisionConfig, BlipImageProcessor, OPTConfig, PreTrainedTokenizerFast)

IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4
TEXT = ("a photo of a red circle on a blue background", "two people walking a dog in a park at sunset",
        "a close up of a flower with green leaves", "a city street with cars and tall buildings")


def tiny_opt_tokenizer() -> PreTrainedTokenizerFast:
    """OPT-style byte-level BPE (GPT-2 alphabet), "</s>" as BOS/EOS prepended to every text, as OPT's is."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(TEXT) * 4, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def save_tiny_blip2(out_dir: str, seed: int = 0) -> str:
    """Writes model + processor to out_dir (loadable with from_pretrained) and returns out_dir."""
    processor = Blip2Processor(
        BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tiny_opt_tokenizer(),
        num_query_tokens=NUM_QUERY_TOKENS,
    )  # adds the "<image>" token to the tokenizer
    tok = processor.tokenizer
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8).to_dict(),
        qformer_config=Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, encoder_hidden_size=32,
                                          vocab_size=len(tok)).to_dict(),
        text_config=OPTConfig(vocab_size=len(tok), hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                              num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        # generate() without input_ids builds its prompt from this; a real checkpoint's config sets it too
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    # Wider weights than the default init (std 0.02): with those a model this small ignores the image and
    # emits EOS at once, so captions would not show whether each image got its own.
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0.0, 0.3)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
