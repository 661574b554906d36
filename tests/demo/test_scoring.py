"""The exact-match evaluator end to end on a tiny model taught two answers (chat template, left padding)."""

from __future__ import annotations

import pytest

from lotavec.tasks import Item, generate_answers, score_items, write_jsonl


@pytest.fixture(scope="module")
def taught(tmp_path_factory, tiny_model_dirs):
    """The tiny llama, fully fine-tuned until it answers two prompts of different lengths."""
    import torch
    from transformers import AutoTokenizer

    from lotavec.demo import full_finetune, load_causal_lm
    from lotavec.train.data import load_jsonl

    items = [Item("Say the word: kiwi", "kiwi"), Item("Repeat after me, please, slowly: plum tart", "plum tart")]
    path = write_jsonl(tmp_path_factory.mktemp("score") / "teach.jsonl", items)
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    model = load_causal_lm(tiny_model_dirs["llama"], dtype="float32")
    torch.manual_seed(0)
    full_finetune(model, load_jsonl(path, tok, 256), 120, 3e-3, pad_token_id=tok.pad_token_id, batch_size=2,
                  bf16=False, device="cpu", seed=0)
    return model, tok, items


def test_taught_answers_score_one(taught):
    model, tok, items = taught
    r = score_items(model, tok, items, batch_size=2)  # one batch: the shorter prompt is left-padded
    assert r.outputs == ["kiwi", "plum tart"]
    assert (r.score, r.correct, r.n) == (1.0, 2, 2)


def test_batching_does_not_change_answers(taught):
    model, tok, items = taught
    one = generate_answers(model, tok, [it.prompt for it in items], max_new_tokens=12, batch_size=1)
    two = generate_answers(model, tok, [it.prompt for it in items], max_new_tokens=12, batch_size=2)
    assert one == two == ["kiwi", "plum tart"]


def test_wrong_answers_and_budget_count_as_wrong(taught):
    model, tok, items = taught
    swapped = [Item(items[0].prompt, "plum tart"), Item(items[1].prompt, "kiwi")]
    r = score_items(model, tok, swapped, batch_size=2)
    assert (r.score, r.correct) == (0.0, 0)
    cut = score_items(model, tok, items, batch_size=2, max_new_tokens=3)  # too short for either answer
    assert cut.correct == 0 and cut.outputs == ["kiw", "plu"]


def test_no_items_scores_zero(taught):
    model, tok, _ = taught
    r = score_items(model, tok, [])
    assert (r.score, r.n, r.outputs) == (0.0, 0, [])


def test_evaluation_leaves_the_model_as_it_was(taught):
    model, tok, items = taught
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    score_items(model, tok, items[:1])
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    first.requires_grad_(True)
