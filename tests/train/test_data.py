"""JSONL data: the three shapes, loss-mask positions, truncation, malformed lines, batching."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lotavec.errors import DataError, NotFoundError
from lotavec.train.data import (
    Collator,
    batch_stream,
    encode_record,
    file_fingerprint,
    fixed_batches,
    load_jsonl,
    read_records,
)


def _write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _counted(tok, ids, labels):
    return tok.decode([i for i, lab in zip(ids, labels) if lab != -100])


def test_prompt_completion_counts_only_completion_and_eos(tok):
    ids, labels = encode_record({"prompt": "2+2=", "completion": "4"}, tok)
    assert ids == tok("2+2=")["input_ids"] + tok("4")["input_ids"] + [tok.eos_token_id]
    assert labels == [-100] * 4 + ids[4:]
    assert _counted(tok, ids, labels) == "4<|im_end|>"


def test_text_counts_everything(tok):
    ids, labels = encode_record({"text": "hello"}, tok)
    assert labels == ids and tok.decode(ids) == "hello<|im_end|>"


def test_messages_count_only_assistant_turns(tok):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    ids, labels = encode_record({"messages": msgs}, tok)
    assert tok.decode(ids) == tok.apply_chat_template(msgs, tokenize=False)
    assert _counted(tok, ids, labels) == "yo<|im_end|>\n4<|im_end|>\n"
    # the counted tokens sit exactly after each assistant header
    text = tok.decode(ids)
    first = text.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    n_before = len(tok(text[:first], add_special_tokens=False)["input_ids"])
    assert labels[n_before - 1] == -100 and labels[n_before] == ids[n_before]


def test_messages_with_default_system_prompt_template(tok):
    smol = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>")
    smol.chat_template = (  # SmolLM2-Instruct's: a default system prompt before a non-system first turn
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nBe helpful<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    msgs = [{"role": "assistant", "content": "first"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "ans"}]
    ids, labels = encode_record({"messages": msgs}, smol)
    assert tok.decode(ids).startswith("<|im_start|>system\nBe helpful")
    assert _counted(tok, ids, labels) == "first<|im_end|>\nans<|im_end|>\n"


def test_load_jsonl_mixed_shapes_truncation_and_stats(tmp_path, tok):
    path = _write(tmp_path, [
        {"prompt": "a" * 10, "completion": "bcd"},
        "",
        {"text": "x" * 50},
        {"prompt": "p" * 40, "completion": "never seen"},  # prompt fills max_length: dropped
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]},
    ])
    data = load_jsonl(path, tok, max_length=30)
    assert data.n_records == 4 and len(data) == 3 and data.n_dropped == 1 and data.n_truncated == 2
    assert all(len(e["input_ids"]) <= 30 and len(e["labels"]) == len(e["input_ids"]) for e in data)
    assert data.fingerprint == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.stats()["loss_tokens"] == data.n_loss_tokens == 4 + 29 + 3  # "bcd"+EOS, text after its first token, "r<|im_end|>\n"


@pytest.mark.parametrize("line, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, found list"),
    ('{"input": "x"}', "missing keys"),
    ('{"prompt": "x"}', "no 'completion' key"),
    ('{"prompt": 1, "completion": "y"}', "'prompt' must be a string, found int"),
    ('{"prompt": "x", "completion": "  "}', "empty 'completion'"),
    ('{"text": ""}', "empty 'text'"),
    ('{"text": ["a"]}', "'text' must be a string"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": "hi"}', "non-empty list, found str"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": [{"role": "assistant"}]}', "messages[0] has no 'content' key"),
    ('{"messages": [{"role": "assistant", "content": 3}]}', "messages[0].content must be a string"),
    ('{"messages": ["hi"]}', "messages[0] must be an object"),
])
def test_malformed_line_names_file_and_line(tmp_path, tok, line, fragment):
    path = _write(tmp_path, [{"text": "ok"}, "", line, {"text": "ok"}])
    with pytest.raises(DataError) as err:
        load_jsonl(path, tok)
    assert f"{path}:3:" in str(err.value) and fragment in str(err.value)


def test_bad_utf8_and_empty_file(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid UTF-8"):
        read_records(path)
    empty = _write(tmp_path, ["", "  "], "empty.jsonl")
    with pytest.raises(DataError, match="no examples"):
        read_records(empty)
    with pytest.raises(NotFoundError):
        file_fingerprint(tmp_path / "missing.jsonl")


def test_messages_need_chat_template(tmp_path, tok):
    plain = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>")
    plain.chat_template = None
    path = _write(tmp_path, [{"messages": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(DataError, match=r"d.jsonl:1: .*chat template"):
        load_jsonl(path, plain)


def test_collator_pads_right():
    batch = Collator(pad_token_id=3, pad_to_multiple_of=4)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 3], [8, 3, 3, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_batch_stream_deterministic_and_covers_epoch():
    examples = [{"input_ids": [i + 4], "labels": [i + 4]} for i in range(10)]
    col = Collator(0)
    a, b = batch_stream(examples, 4, col, seed=7), batch_stream(examples, 4, col, seed=7)
    first = [next(a) for _ in range(3)]
    assert all(torch.equal(x["input_ids"], next(b)["input_ids"]) for x in first)
    seen = sorted(int(t) for x in first for t in x["input_ids"].reshape(-1))
    assert seen == list(range(4, 14))  # one epoch = 4 + 4 + 2 examples
    assert [x["input_ids"].shape[0] for x in fixed_batches(examples, 4, col)] == [4, 4, 2]
