import torch

from mathllava.evaluation.runner import frequent_answer_responses, problem_from_row, score_responses
from mathllava.formats import target_text
from mathllava.ingest import ingest_llava
from mathllava.modeling import (IGNORE_INDEX, ConversationDataset, TinyModelConfig, TrainConfig, build_model,
                                build_processor, collate, encode_example, freeze_vision_tower, generate_answers, load,
                                load_rgb, save, train, train_tokenizer)

CFG = TinyModelConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1,
                      text_intermediate=128, vocab_size=500)


def _setup(small_dataset, n=48):
    manifest, _ = ingest_llava(small_dataset, small_dataset.parent / "images")
    rows = manifest.iloc[:n]
    problems = [problem_from_row(r) for r in rows.to_dict("records")]
    targets = [target_text(p["answer"], p["question_type"], p["choices"]) for p in problems]
    tok = train_tokenizer([p["query"] for p in problems] + targets, CFG.vocab_size)
    processor = build_processor(tok, CFG)
    return rows, problems, targets, processor


def test_loss_only_on_answer_tokens(small_dataset):
    rows, problems, targets, processor = _setup(small_dataset, 4)
    ex = encode_example(processor, problems[0]["query"], targets[0], load_rgb(rows.iloc[0]["image_path"]))
    learned = [t for t in ex.labels if t != IGNORE_INDEX]
    tok = processor.tokenizer
    assert learned[-1] == tok.eos_token_id
    assert tok.decode(learned[:-1]).strip() == targets[0]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ex.input_ids.count(image_id) == (CFG.image_size // CFG.patch_size) ** 2  # expanded image tokens
    assert all(label == IGNORE_INDEX for label, tid in zip(ex.labels, ex.input_ids) if tid == image_id)


def test_training_lowers_loss_and_save_load_round_trips(small_dataset, tmp_path):
    rows, problems, targets, processor = _setup(small_dataset)
    model = build_model(processor.tokenizer, CFG)
    frozen_before = {n: p.clone() for n, p in model.model.vision_tower.named_parameters()}
    trainable = freeze_vision_tower(model)
    assert 0 < trainable < sum(p.numel() for p in model.parameters())
    ds = ConversationDataset(processor, [p["query"] for p in problems], targets, rows["image_path"].tolist())
    batch = collate(processor.tokenizer.pad_token_id)([ds[i] for i in range(8)])
    with torch.no_grad():
        before = model(**batch).loss.item()
    history = train(model, processor, ds, TrainConfig(epochs=4, learning_rate=3e-3, batch_size=8, logging_steps=2),
                    tmp_path / "work")
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before * 0.8
    assert any("loss" in h for h in history)
    for n, p in model.model.vision_tower.named_parameters():
        assert torch.equal(p, frozen_before[n]), f"vision tower parameter {n} changed"
    queries, paths = [p["query"] for p in problems[:6]], rows["image_path"].tolist()[:6]
    first = generate_answers(model, processor, queries, paths, batch_size=4, max_new_tokens=4)
    save(model, processor, tmp_path / "model")
    model2, processor2 = load(tmp_path / "model")
    assert generate_answers(model2, processor2, queries, paths, batch_size=3, max_new_tokens=4) == first


def test_frequent_answer_baseline_and_scoring(small_dataset):
    _, problems, _, _ = _setup(small_dataset)
    responses = frequent_answer_responses(problems, problems)
    results, scores = score_responses(problems, responses)
    assert scores["average"]["total"] == len(problems)
    assert set(results) == {p["pid"] for p in problems}
    gold = [target_text(p["answer"], p["question_type"], p["choices"]) for p in problems]
    _, perfect = score_responses(problems, gold)
    assert perfect["average"]["accuracy"] == "100.0"
