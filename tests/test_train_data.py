"""Training inputs: the conversation format, labels, truncation, the encoded cache, the collator,
typed settings and the output folder rules. Fast: a tiny base saved to disk, no training."""

import json

import numpy as np
import pytest
import torch

from mathllava.conversation import IGNORE_INDEX, conversation_text, prompt
from mathllava.settings import parse
from mathllava.train.config import ModelSettings, TrainSettings, load_sections
from mathllava.train.data import DataError, encode_conversation, normalize_pixels, read_conversations
from mathllava.train.encoded import EncodedData, ensure_encoded
from mathllava.train.runner import RunConflict, check_output, complete_checkpoints, remove_torn_checkpoints
from mathllava.train.trainer import COMPLETE, trainer_classes
from mathllava.train.tiny import TinyModelConfig, init_tiny

from conftest import ROOT

TINY = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1,
                       text_intermediate=128, vocab_size=500)
TWO_TURNS = [{"from": "human", "value": "<image>\nHint: Answer.\nQuestion: How many bars?"},
             {"from": "gpt", "value": "12"},
             {"from": "human", "value": "Which is the tallest?"},
             {"from": "gpt", "value": "B"}]
# llava-hf's own LLaVA-1.5 template: no system prompt, no </s> after the assistant's turn
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_dataset):
    records = json.loads(small_dataset.read_text())
    texts = [t["value"] for r in records for t in r["conversations"]] + ["How many bars? Which is the tallest?"]
    return init_tiny(tmp_path_factory.mktemp("base") / "tiny", TINY, texts)


@pytest.fixture(scope="module")
def processor(base):
    from mathllava.llava import load_processor

    return load_processor(base)


def _learned(labels):
    return [t for t in labels if t != IGNORE_INDEX]


def test_labels_are_the_assistant_turns_each_closed_by_eos(processor):
    tok = processor.tokenizer
    enc = encode_conversation(processor, TWO_TURNS, with_image=True, image_tokens=4, max_length=2048)
    assert enc.status == "ok" and len(enc.input_ids) == len(enc.labels)
    learned = _learned(enc.labels)
    assert tok.decode(learned) == " 12</s> B</s>"
    assert enc.input_ids.count(processor.image_token_id) == 4  # the placeholder expanded, never learned
    assert all(label == IGNORE_INDEX for label, tid in zip(enc.labels, enc.input_ids) if tid == processor.image_token_id)
    # the prompt part is exactly what generation feeds the model for the first question
    first_target = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    asked = tok(prompt(processor, "Hint: Answer.\nQuestion: How many bars?"))["input_ids"]
    image = asked.index(processor.image_token_id)
    asked = asked[:image] + [processor.image_token_id] * 4 + asked[image + 1:]
    assert enc.input_ids[:first_target] == asked


def test_a_template_without_eos_still_teaches_the_model_to_stop(processor):
    import copy

    llava_hf = copy.deepcopy(processor)
    llava_hf.chat_template = LLAVA_HF_TEMPLATE
    text, spans = conversation_text(llava_hf, [("How many?", "12"), ("And?", "B")])
    assert text.startswith("USER: <image>\nHow many? ASSISTANT: 12 USER:") and [text[a:b] for a, b in spans] == \
        [" 12", " B"]
    enc = encode_conversation(llava_hf, TWO_TURNS, with_image=True, image_tokens=4, max_length=2048)
    eos = llava_hf.tokenizer.eos_token_id
    learned = _learned(enc.labels)
    assert learned.count(eos) == 2 and learned[-1] == eos  # appended after each answer
    assert llava_hf.tokenizer.decode([t for t in learned if t != eos]).split() == ["12", "B"]


def test_truncation_drops_whole_turns_and_never_cuts_an_answer(processor):
    full = encode_conversation(processor, TWO_TURNS, True, 4, 2048)
    eos = processor.tokenizer.eos_token_id
    first_end = full.input_ids.index(eos) + 1
    cut = encode_conversation(processor, TWO_TURNS, True, 4, max_length=len(full.input_ids) - 1)
    assert cut.status == "truncated" and cut.turns_kept == 1
    assert cut.input_ids == full.input_ids[:first_end] and cut.labels[-1] == eos
    dropped = encode_conversation(processor, TWO_TURNS, True, 4, max_length=first_end - 1)
    assert dropped.status == "dropped" and dropped.input_ids == []


def test_read_conversations_names_the_file_and_line(tmp_path):
    good = {"id": "a", "image": "x.png", "conversations": TWO_TURNS[:2]}
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps(good) + "\n\n" + "{broken\n")
    with pytest.raises(DataError, match=r"d\.jsonl: line 3 is not valid JSON"):
        read_conversations(jsonl)
    listed = tmp_path / "d.json"
    listed.write_text(json.dumps([good, {"id": "b", "conversations": [TWO_TURNS[1], TWO_TURNS[0]]}]))
    with pytest.raises(DataError, match=r"d\.json: record 1: turns 0 and 1 must be from human then gpt"):
        read_conversations(listed)
    listed.write_text(json.dumps({"data": [good]}))
    with pytest.raises(DataError, match="expected a JSON list"):
        read_conversations(listed)
    listed.write_text("\ufeff" + json.dumps([good]))  # a UTF-8 BOM is fine
    assert read_conversations(listed) == [good]


def _records(small_dataset, n=24):
    return json.loads(small_dataset.read_text())[:n]


def test_encoded_cache_gives_the_processors_pixels_and_is_reused(base, processor, small_dataset, tmp_path):
    from PIL import Image

    records = _records(small_dataset)
    root = small_dataset.parent / "images"
    encoded = ensure_encoded(small_dataset, records, root, base, 512, tmp_path / "cache", workers=0, progress=False)
    assert len(encoded) == len(records) and encoded.meta["images"] == len({r["image"] for r in records})
    assert encoded.pixels.dtype == np.uint8  # 4x smaller than the processor's float32
    for i in (0, 7):
        with Image.open(root / records[i]["image"]) as img:
            expected = processor.image_processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"]
        item = encoded[i]
        got = normalize_pixels(torch.from_numpy(np.array(item["pixels"]))[None], encoded.meta["normalizer"])
        assert torch.allclose(got, expected, atol=1e-6)
        direct = encode_conversation(processor, records[i]["conversations"], True, encoded.meta["image_tokens"], 512)
        assert item["input_ids"].tolist() == direct.input_ids and item["labels"].tolist() == direct.labels
    again = ensure_encoded(small_dataset, records, root, base, 512, tmp_path / "cache", workers=0, progress=False)
    assert again.root == encoded.root  # same inputs: the cache is reused
    other = ensure_encoded(small_dataset, records, root, base, 400, tmp_path / "cache", workers=0, progress=False)
    assert other.root != encoded.root  # another max_length: encoded anew
    pooled = ensure_encoded(small_dataset, records, root, base, 300, tmp_path / "pool", workers=2, progress=False)
    assert np.array_equal(np.asarray(pooled.ids), np.asarray(
        ensure_encoded(small_dataset, records, root, base, 300, tmp_path / "inline", workers=0, progress=False).ids))


def test_encoding_counts_truncated_and_dropped_records(base, small_dataset, tmp_path):
    records = _records(small_dataset, 6)
    records[0] = {**records[0], "conversations": records[0]["conversations"] * 3}  # three turns
    records[1] = {**records[1], "conversations": [records[1]["conversations"][0],
                                                  {"from": "gpt", "value": "a very long answer " * 40}]}
    root = small_dataset.parent / "images"
    plain = ensure_encoded(small_dataset, records[2:], root, base, 2048, tmp_path, workers=0, progress=False)
    limit = int(plain.lengths.max()) + 5  # every one-turn record fits, the long answer and three turns do not
    encoded = ensure_encoded(small_dataset, records, root, base, limit, tmp_path, workers=0, progress=False)
    assert encoded.meta["dropped"] == 1 and encoded.meta["dropped_ids"] == [str(records[1]["id"])]
    assert encoded.meta["truncated"] == 1 and len(encoded) == 5
    assert int(encoded.lengths.max()) <= limit


def test_missing_image_and_escaping_path_are_refused_before_training(base, small_dataset, tmp_path):
    records = _records(small_dataset, 3)
    root = small_dataset.parent / "images"
    with pytest.raises(DataError, match=r"record 1 .*not found under"):
        ensure_encoded(small_dataset, [records[0], {**records[1], "image": "nope.png"}], root, base, 512, tmp_path,
                       progress=False)
    with pytest.raises(DataError, match="escapes the image root"):
        ensure_encoded(small_dataset, [{**records[0], "image": "../x.png"}], root, base, 512, tmp_path, progress=False)


def test_collator_pads_with_ignore_and_the_loss_does_not_see_padding(base, small_dataset, tmp_path):
    from transformers import LlavaForConditionalGeneration

    records = _records(small_dataset, 8)
    encoded = ensure_encoded(small_dataset, records, small_dataset.parent / "images", base, 512, tmp_path,
                             workers=0, progress=False)
    order = np.argsort(encoded.lengths)
    short, long = encoded[int(order[0])], encoded[int(order[-1])]
    assert len(short["input_ids"]) < len(long["input_ids"])
    _, Collator = trainer_classes()
    batch = Collator(pad_id=3, multiple_of=8)([short, long])
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= len(long["input_ids"])
    n = len(short["input_ids"])
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, n:] == 0).all()
    assert (batch["input_ids"][0, n:] == 3).all()
    model = LlavaForConditionalGeneration.from_pretrained(base).eval()

    def loss_of(b):
        inputs = {k: v for k, v in b.items() if k != "raw_pixels"}
        inputs["pixel_values"] = normalize_pixels(b["raw_pixels"], encoded.meta["normalizer"])
        with torch.no_grad():
            return model(**inputs).loss.item()

    tokens = [int((batch["labels"][i, 1:] != IGNORE_INDEX).sum()) for i in range(2)]
    alone = [loss_of(Collator(3, None)([item])) for item in (short, long)]
    together = loss_of(batch)
    assert together == pytest.approx((alone[0] * tokens[0] + alone[1] * tokens[1]) / sum(tokens), rel=1e-4)


def test_settings_refuse_unknown_keys_and_impossible_values(tmp_path):
    with pytest.raises(ValueError, match=r"train\.lora\.rank: Extra inputs are not permitted"):
        parse(TrainSettings, {"lora": {"rank": 8}}, "train")
    with pytest.raises(ValueError, match=r"train\.save_total_limit: .*at least 2"):
        parse(TrainSettings, {"save_total_limit": 1}, "train")
    with pytest.raises(ValueError, match=r"train\.mode: Input should be 'full' or 'lora'"):
        parse(TrainSettings, {"mode": "qlora"}, "train")
    with pytest.raises(ValueError, match=r"train\.deepspeed: .*not found"):
        parse(TrainSettings, {"deepspeed": "configs/deepspeed/zero9.json"}, "train")
    with pytest.raises(ValueError, match=r"model\.base: .*no config\.json"):
        parse(ModelSettings, {"base": str(tmp_path)}, "model")
    with pytest.raises(ValueError, match=r"model\.tiny\.image_sise"):
        parse(ModelSettings, {"tiny": {"image_sise": 3}}, "model")


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_gpu_configs_carry_the_papers_recipe(size, base, tmp_path):
    import yaml

    config = yaml.safe_load((ROOT / "configs" / f"gpu-llava-1.5-{size}.yaml").read_text())
    config["parameters"]["model"]["base"] = str(base)  # the only thing a user changes, with the data paths
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(config))
    model, train = load_sections(path)
    assert (train.mode, train.learning_rate, train.epochs, train.batch_size, train.max_length, train.warmup_ratio,
            train.lr_scheduler, train.weight_decay) == ("full", 2e-5, 2, 16, 2048, 0.03, "cosine", 0.0)
    assert json.loads((ROOT / train.deepspeed).read_text())["zero_optimization"]["stage"] == 3
    assert train.gradient_checkpointing and train.bf16 == "auto" and train.device == "cuda"
    assert config["parameters"]["evaluate"]["device"] == "cuda"


def test_every_step_config_key_is_a_known_setting():
    for name in ("local", "test"):
        load_sections(ROOT / "configs" / f"{name}.yaml")


def test_output_folder_is_never_silently_reused(tmp_path):
    identity = {"base": "b", "data": "d", "settings": {"epochs": 2.0}}
    assert check_output(tmp_path, identity, resume=False) is None
    (tmp_path / "run.json").write_text(json.dumps(identity))
    with pytest.raises(RunConflict, match="pass --resume"):
        check_output(tmp_path, identity, resume=False)
    with pytest.raises(RunConflict, match=r"settings\.epochs"):
        check_output(tmp_path, {**identity, "settings": {"epochs": 3.0}}, resume=True)
    ckpts = tmp_path / "checkpoints"
    for step, whole in ((5, True), (10, True), (15, False)):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        if whole:
            (ckpts / f"checkpoint-{step}" / COMPLETE).write_text("")
    assert check_output(tmp_path, identity, resume=True).endswith("checkpoint-10")  # the torn one is passed over
    assert remove_torn_checkpoints(ckpts) == ["checkpoint-15"]
    assert [p.name for p in complete_checkpoints(ckpts)] == ["checkpoint-5", "checkpoint-10"]
    other = tmp_path / "other"
    (other / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    with pytest.raises(RunConflict, match="unknown run"):
        check_output(other, identity, resume=True)


def test_encoded_data_reads_back_what_was_written(base, small_dataset, tmp_path):
    records = _records(small_dataset, 5)
    encoded = ensure_encoded(small_dataset, records, small_dataset.parent / "images", base, 512, tmp_path,
                             workers=0, progress=False)
    reopened = EncodedData(encoded.root)
    assert [reopened[i]["input_ids"].tolist() for i in range(5)] == [encoded[i]["input_ids"].tolist() for i in range(5)]
    assert (reopened.image_index >= 0).all() and reopened.pixels.shape[0] == reopened.meta["images"]


def test_init_tiny_writes_a_llava_hf_checkpoint_with_its_chat_template(small_dataset, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mathllava import cli
    from mathllava.conversation import VICUNA_TEMPLATE

    out = tmp_path / "tiny"
    assert cli.main(["model", "init-tiny", str(out), "--data", str(small_dataset)]) == 0
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert processor.chat_template == VICUNA_TEMPLATE
    assert model.config.image_token_index == processor.tokenizer.convert_tokens_to_ids("<image>")
    question = json.loads(small_dataset.read_text())[0]["conversations"][0]["value"]
    assert len(processor.tokenizer(question)["input_ids"]) < len(question) / 2  # trained on the data's text
    assert cli.main(["model", "init-tiny", str(out)]) == 2  # never overwrites without --force
    assert cli.main(["model", "init-tiny", str(tmp_path / "x"), "--data", str(tmp_path / "missing.json")]) == 2


# --- boundaries that mutation testing found unguarded (make mutation, train/data.py) -----------------------

def test_each_unusable_training_file_is_refused_with_its_own_message(tmp_path):
    good = {"id": "a", "image": "x.png", "conversations": TWO_TURNS[:2]}
    path = tmp_path / "d.json"
    with pytest.raises(DataError) as err:
        read_conversations(path)
    assert str(err.value) == f"{path}: no such training file"
    cases = [
        ("[\n", "not valid JSON (line 2, column 1): Expecting value"),
        ("[]", "no records"),
        ('"text"', "expected a JSON list of LLaVA records, found str"),
        (json.dumps(["x"]), "record 0 has no 'conversations' list"),
        (json.dumps([good, {"id": "b"}]), "record 1 has no 'conversations' list"),
        (json.dumps([{"id": "b", "conversations": "hi"}]), "record 0 has no 'conversations' list"),
        (json.dumps([{**good, "image": 5}]), "record 0: 'image' must be a path string"),
        (json.dumps([{**good, "image": ["a.png"]}]), "record 0: 'image' must be a path string"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(DataError) as err:
            read_conversations(path)
        assert str(err.value) == f"{path}: {message}", text
    empty = tmp_path / "d.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError) as err:
        read_conversations(empty)
    assert str(err.value) == f"{empty}: no records"
    path.write_text(json.dumps([{**good, "image": None}, {k: v for k, v in good.items() if k != "image"}]))
    assert len(read_conversations(path)) == 2        # no image: a text-only record


def test_the_models_own_template_and_the_image_choice_shape_the_tokens(processor):
    import copy

    llava_hf = copy.deepcopy(processor)
    llava_hf.chat_template = LLAVA_HF_TEMPLATE
    tok = processor.tokenizer
    own = tok.decode(encode_conversation(llava_hf, TWO_TURNS, True, 4, 2048).input_ids)
    default = tok.decode(encode_conversation(processor, TWO_TURNS, True, 4, 2048).input_ids)
    assert own != default and own.lstrip("<s> ").startswith("USER:")
    with_image = encode_conversation(processor, TWO_TURNS, True, 4, 2048)
    without = encode_conversation(processor, TWO_TURNS, False, 4, 2048)
    assert with_image.input_ids.count(processor.image_token_id) == 4
    assert processor.image_token_id not in without.input_ids
    assert _learned(without.labels) == _learned(with_image.labels)


def test_stored_pixels_are_compact_only_when_nothing_is_lost():
    from mathllava.train.data import compact_pixels

    for values, dtype in (([0.0, 255.0], np.uint8), ([0.0, 256.0], np.float16), ([-1.0, 3.0], np.float16),
                          ([1.0, 3.0], np.uint8), ([0.5, 3.0], np.float16), ([0.0, 0.0], np.uint8)):
        out = compact_pixels(np.array(values, dtype=np.float32))
        assert out.dtype == dtype, values
        assert out.astype(np.float32).tolist() == values


def test_raw_pixels_finish_as_the_processors_own_pixel_values(processor):
    from PIL import Image

    from mathllava.train.data import pixel_normalizer, raw_pixels

    image = Image.new("RGB", (40, 30), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 30))     # black and white: 0 and 255 both present
    raw = raw_pixels(processor, image)
    assert raw.dtype == np.uint8 and raw.min() == 0 and raw.max() == 255
    expected = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    got = normalize_pixels(torch.from_numpy(raw)[None], pixel_normalizer(processor))
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-5)
    half = normalize_pixels(torch.from_numpy(raw)[None], pixel_normalizer(processor), dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), expected, atol=1e-2)


def test_the_normalizer_follows_the_processors_rescale_and_normalize_switches(processor):
    import copy

    from mathllava.train.data import pixel_normalizer

    ip = processor.image_processor
    both = pixel_normalizer(processor)
    assert both == {"scale": float(ip.rescale_factor), "mean": [float(v) for v in ip.image_mean],
                    "std": [float(v) for v in ip.image_std]}
    plain = copy.deepcopy(processor)
    plain.image_processor.do_rescale = False
    plain.image_processor.do_normalize = False
    assert pixel_normalizer(plain) == {"scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def test_an_answer_the_tokenizer_maps_to_no_tokens_is_named(processor):
    """A tokenizer whose normaliser deletes an answer's characters leaves that assistant turn without tokens:
    the record is refused naming the turn, never trained with a silently missing answer."""
    import copy

    from mathllava.conversation import TemplateError, turns_from_llava

    _, spans = conversation_text(processor, turns_from_llava(TWO_TURNS), True)
    real = processor.tokenizer

    class Deleting:   # the real tokenizer, except that the second answer's characters map to no token
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, text, **kwargs):
            enc = real(text, **kwargs)
            start, end = spans[1]
            enc["offset_mapping"] = [(0, 0) if a >= start and b <= end else (a, b) for a, b in enc["offset_mapping"]]
            return enc

    deleting = copy.copy(processor)
    deleting.tokenizer = Deleting()
    with pytest.raises(TemplateError) as err:
        encode_conversation(deleting, TWO_TURNS, True, 4, 2048)
    assert str(err.value) == "assistant turn 1 has no tokens"


def test_truncation_bounds_are_inclusive(processor):
    """A record of exactly max_length tokens is kept whole; a cut exactly at a turn's end keeps that turn."""
    full = encode_conversation(processor, TWO_TURNS, True, 4, 2048)
    eos = processor.tokenizer.eos_token_id
    first_end = full.input_ids.index(eos) + 1
    exact = encode_conversation(processor, TWO_TURNS, True, 4, max_length=len(full.input_ids))
    assert exact.status == "ok" and exact.turns_kept == 2 and exact.input_ids == full.input_ids
    at_turn = encode_conversation(processor, TWO_TURNS, True, 4, max_length=first_end)
    assert at_turn.status == "truncated" and at_turn.turns_kept == 1 and at_turn.input_ids == full.input_ids[:first_end]
    dropped = encode_conversation(processor, TWO_TURNS, True, 4, max_length=first_end - 1)
    assert (dropped.status, dropped.turns_kept, dropped.labels) == ("dropped", 0, [])
