"""A tiny LLaVA built entirely in code: a locally trained BPE tokenizer, a CLIP-style vision tower,
a Llama-style text model, the LLaVA-1.5 (vicuna_v1) conversation format, and loss on answer
tokens only. The same code takes a real LLaVA-1.5 checkpoint directory on a GPU machine."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IGNORE_INDEX = -100


def prompt_text(query: str, system: str = SYSTEM_PROMPT) -> str:
    """The vicuna_v1 template up to the assistant's turn (the answer follows after a space)."""
    return f"{system} USER: {IMAGE_TOKEN}\n{query} ASSISTANT:"


@dataclass
class TinyModelConfig:
    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 256
    vocab_size: int = 2000
    max_positions: int = 512
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE trained on the project's own text; no hub download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + [SYSTEM_PROMPT, "USER: ASSISTANT: 0123456789"], trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
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
                          num_additional_image_tokens=1)


def build_model(tokenizer, cfg: TinyModelConfig):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(cfg.seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size,
                                       hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                                       num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
                                intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
                                num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
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


def freeze_vision_tower(model) -> int:
    """Freeze the vision encoder (LLaVA-1.5 and Math-LLaVA train the projector and the LM only);
    returns the number of trainable parameters left."""
    for p in model.model.vision_tower.parameters():
        p.requires_grad = False
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_rgb(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: object


def encode_example(processor, query: str, target: str, image) -> EncodedExample:
    """Prompt tokens masked out of the loss; the answer and </s> are learned."""
    enc = processor(images=image, text=prompt_text(query), return_tensors="pt")
    prompt_ids = enc["input_ids"][0].tolist()
    tok = processor.tokenizer
    answer_ids = tok(" " + target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return EncodedExample(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
                          enc["pixel_values"][0])


class ConversationDataset:
    """Torch-style dataset over (query, target, image path) triples, encoded lazily."""

    def __init__(self, processor, queries: list[str], targets: list[str], image_paths: list[str]):
        self.processor, self.queries, self.targets, self.paths = processor, queries, targets, image_paths

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> dict:
        ex = encode_example(self.processor, self.queries[i], self.targets[i], load_rgb(self.paths[i]))
        return {"input_ids": ex.input_ids, "labels": ex.labels, "pixel_values": ex.pixel_values}


def collate(pad_id: int):
    import torch

    def _collate(batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "pixel_values": torch.stack([b["pixel_values"] for b in batch])}

    return _collate


@dataclass
class TrainConfig:
    epochs: float = 2.0
    learning_rate: float = 2e-3
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    logging_steps: int = 10
    seed: int = 0
    deepspeed: dict | str | None = None  # a DeepSpeed config (dict or JSON path), GPU or CPU (gloo)
    bf16: bool = False
    use_cpu: bool = True
    extra: dict = field(default_factory=dict)


def train(model, processor, dataset: ConversationDataset, cfg: TrainConfig, output_dir: str | Path,
          on_log=None) -> list[dict]:
    """Fine-tune with the transformers Trainer (DeepSpeed when configured); returns the log history."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class _Relay(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log and logs:
                on_log(state.global_step, logs)

    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.logging_steps, save_strategy="no", report_to=[], seed=cfg.seed,
        dataloader_num_workers=0, remove_unused_columns=False, use_cpu=cfg.use_cpu, bf16=cfg.bf16,
        deepspeed=cfg.deepspeed, disable_tqdm=False, **cfg.extra,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=collate(processor.tokenizer.pad_token_id), callbacks=[_Relay()])
    trainer.train()
    return trainer.state.log_history


def prompt_text_only(query: str, system: str = SYSTEM_PROMPT) -> str:
    """The same template without an image (text-only requests such as answer extraction)."""
    return f"{system} USER: {query} ASSISTANT:"


def generate_replies(model, processor, queries: list[str], images: list, max_new_tokens: int = 12,
                     temperature: float = 0.0, seed: int | None = 0, token_counts: list | None = None) -> list[str]:
    """One batch: left-padded, greedy unless temperature > 0 (then sampled with `seed`). `images`
    holds PIL images or None (a text-only prompt); mixed batches are split by kind. When a list is
    given as `token_counts`, the number of generated tokens per reply is appended to it."""
    import torch

    if len(queries) != len(images):
        raise ValueError("one image (or None) per query")
    with_image = [i for i, im in enumerate(images) if im is not None]
    without = [i for i, im in enumerate(images) if im is None]
    if with_image and without:
        out = [""] * len(queries)
        for group in (with_image, without):
            replies = generate_replies(model, processor, [queries[i] for i in group], [images[i] for i in group],
                                       max_new_tokens, temperature, seed)
            for i, reply in zip(group, replies):
                out[i] = reply
        return out
    tok = processor.tokenizer
    tok.padding_side = "left"
    model.eval()
    if with_image:
        enc = processor(images=list(images), text=[prompt_text(q) for q in queries], return_tensors="pt", padding=True)
    else:
        enc = tok([prompt_text_only(q) for q in queries], return_tensors="pt", padding=True)
    sampling = temperature > 0
    if seed is not None:
        torch.manual_seed(seed)
    options = {"do_sample": True, "temperature": temperature} if sampling else {"do_sample": False}
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **options)
    new = gen[:, enc["input_ids"].shape[1]:]
    if token_counts is not None:
        token_counts.extend(int((row != tok.pad_token_id).sum()) for row in new)
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def generate_answers(model, processor, queries: list[str], image_paths: list[str], batch_size: int = 16,
                     max_new_tokens: int = 12, progress: bool = False) -> list[str]:
    """Greedy, batched, left-padded generation over image files; returns the decoded replies."""
    out: list[str] = []
    starts = range(0, len(queries), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="generate", unit="batch")
    for s in starts:
        images = [load_rgb(p) for p in image_paths[s:s + batch_size]]
        out.extend(generate_replies(model, processor, queries[s:s + batch_size], images, max_new_tokens))
    return out


def save(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load(model_dir: str | Path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor
