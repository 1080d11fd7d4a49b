"""The embedded default base: a tiny LLaVA built in code (a locally trained byte-level BPE tokenizer,
a CLIP-style vision tower, a Llama-style LM, the vicuna_v1 chat template), saved as a llava-hf
checkpoint so that everything downstream treats it exactly like a pretrained LLaVA-1.5 directory.
No hub access."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ConfigDict

from ..conversation import IMAGE_TOKEN, SYSTEM_PROMPT, VICUNA_TEMPLATE

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
# text every tiny tokenizer sees besides the caller's: the template, MathVista-style hints, digits
BASE_CORPUS = [
    SYSTEM_PROMPT, "USER: ASSISTANT: 0123456789 . , ; : ( ) [ ] + - * / = % $",
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.",
    "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final "
    "value, e.g., 1.2, 1.3, 1.4, at the end.",
    "Question: What is the value of x? How many objects are there? Which is the largest? Choices: (A) (B) (C) (D) (E)",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
]


class TinyModelConfig(BaseModel):
    """Shape of the built-in tiny model (used only when no `model.base` is given)."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int | None = None   # None: 2 x vision_hidden
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256
    text_kv_heads: int | None = None         # None: text_heads (no grouped-query attention)
    vocab_size: int = 2000
    max_positions: int = 4096  # as LLaVA-1.5: room for benchmark prompts (Math-V, few-shot extraction)
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE trained on the given text plus `BASE_CORPUS`; prepends <s> to every encoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + BASE_CORPUS, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def build_processor(tokenizer, cfg: TinyModelConfig):
    from transformers import LlavaProcessor

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor  # no torchvision here
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor
    image_processor = ImageProcessor(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=1, chat_template=VICUNA_TEMPLATE)


def build_model(tokenizer, cfg: TinyModelConfig):
    """A randomly initialised LlavaForConditionalGeneration of the tiny shape (seeded)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(cfg.seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size,
                                       hidden_size=cfg.vision_hidden,
                                       intermediate_size=cfg.vision_intermediate or cfg.vision_hidden * 2,
                                       num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
                                intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
                                num_attention_heads=cfg.text_heads,
                                num_key_value_heads=cfg.text_kv_heads or cfg.text_heads,
                                max_position_embeddings=cfg.max_positions, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def init_tiny(out_dir: str | Path, cfg: TinyModelConfig | None = None, texts: Iterable[str] = ()) -> Path:
    """Write the tiny model as a llava-hf checkpoint (config, weights, tokenizer, processor, chat
    template) to `out_dir`; its tokenizer is trained on `texts` plus the built-in corpus."""
    from ..llava import save

    cfg = cfg or TinyModelConfig()
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    return save(build_model(tokenizer, cfg), build_processor(tokenizer, cfg), out_dir)
