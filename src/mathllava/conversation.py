"""The one home of the prompt format, imported by training, generation and serving alike.

A model directory carries its chat template (llava-hf checkpoints ship one; the built-in tiny model is
saved with `VICUNA_TEMPLATE`, LLaVA-1.5's vicuna_v1 format). Prompts are always rendered through the
model's own template, so training and generation see the same text:

    <system> USER: <image>\\n<question> ASSISTANT: <answer></s>USER: ... ASSISTANT:

Training needs more than the text: which characters are the assistant's turns (the only tokens the
loss is taken on). `conversation_text` renders a multi-turn conversation and returns those spans,
found by rendering each prefix of the conversation with and without its assistant turn.
"""

from __future__ import annotations

from typing import Any, Sequence

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# LLaVA-1.5 vicuna_v1 (sep " ", sep2 "</s>"); user content may be a string or a list of parts, with
# images given as {"type": "image"} (processor side) or {"type": "image_url"} (OpenAI/vLLM side).
VICUNA_TEMPLATE = (
    "{%- set system = '" + SYSTEM_PROMPT.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] -%}{%- set messages = messages[1:] -%}{%- endif -%}"
    "{{- system -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- (' ' if loop.first else '') + 'USER: ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] in ('image', 'image_url') -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ' ASSISTANT: ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}{{- '</s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}"
)


class TemplateError(ValueError):
    pass


def template_of(processor) -> str:
    """The chat template a model directory carries (processor first, then tokenizer); the vicuna_v1
    template for a checkpoint saved without one."""
    for owner in (processor, getattr(processor, "tokenizer", None)):
        template = getattr(owner, "chat_template", None)
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default")
        if isinstance(template, str) and template.strip():
            return template
    return VICUNA_TEMPLATE


def user_message(text: str, with_image: bool) -> dict:
    if not with_image:
        return {"role": "user", "content": [{"type": "text", "text": text}]}
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def render(processor, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """The template's text for `messages`, through transformers' own (sandboxed) Jinja renderer."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[list(messages)], chat_template=template_of(processor),
                                        add_generation_prompt=add_generation_prompt,
                                        **_special_tokens(processor))
    return rendered[0]


def _special_tokens(processor) -> dict[str, Any]:
    tok = getattr(processor, "tokenizer", processor)
    return {"bos_token": getattr(tok, "bos_token", None) or "", "eos_token": getattr(tok, "eos_token", None) or ""}


def prompt(processor, query: str, with_image: bool = True) -> str:
    """The generation prompt for one user turn (the assistant's reply follows)."""
    return render(processor, [user_message(query, with_image)], add_generation_prompt=True)


def turns_from_llava(conversations: Sequence[dict]) -> list[tuple[str, str]]:
    """(user text, assistant text) pairs from a LLaVA record's `conversations`
    ([{"from": "human"|"gpt", "value": ...}, ...]); the `<image>` marker is removed from the text
    (the template places the image itself, in the first user turn)."""
    pairs: list[tuple[str, str]] = []
    turns = list(conversations)
    if len(turns) < 2 or len(turns) % 2:
        raise TemplateError("conversations must alternate human and gpt turns, starting with human")
    for i in range(0, len(turns), 2):
        human, gpt = turns[i], turns[i + 1]
        if not (isinstance(human, dict) and isinstance(gpt, dict)) or human.get("from") != "human" \
                or gpt.get("from") != "gpt":
            raise TemplateError(f"turns {i} and {i + 1} must be from human then gpt")
        if not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
            raise TemplateError(f"turns {i} and {i + 1} must have string values")
        text = human["value"].replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip()
        pairs.append((text, gpt["value"].strip()))
    return pairs


def conversation_text(processor, turns: Sequence[tuple[str, str]], with_image: bool = True
                      ) -> tuple[str, list[tuple[int, int]]]:
    """(full text, character spans of each assistant turn). A span starts where the generation
    prompt ends and ends after the turn's text, including any end-of-sequence marker the template
    puts there; trailing whitespace is left out. Raises TemplateError when the template does not
    render a conversation as a prefix of its continuation (such a template cannot be trained on)."""
    messages: list[dict] = []
    spans: list[tuple[int, int]] = []
    text = ""
    for k, (user, reply) in enumerate(turns):
        messages.append(user_message(user, with_image and k == 0))
        asked = render(processor, messages, add_generation_prompt=True)
        messages.append(assistant_message(reply))
        text = render(processor, messages, add_generation_prompt=False)
        if not text.startswith(asked):
            raise TemplateError("the chat template does not render a conversation as a prefix of its "
                                "continuation; its assistant turns cannot be located")
        end = len(text.rstrip())
        if end <= len(asked):
            raise TemplateError(f"assistant turn {k} renders empty")
        spans.append((len(asked), end))
    return text, spans
