"""Task generators: deterministic, train/test disjoint, answers right; scorer and JSONL writer."""

from __future__ import annotations

import json
import re

import pytest

from lotavec.errors import DataError
from lotavec.tasks import (
    TASKS,
    answer_budget,
    exact_match,
    get_task,
    make_items,
    split_of,
    write_jsonl,
)

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_items_are_deterministic_and_distinct(task):
    a = make_items(task, "train", 60, seed=3)
    assert a == make_items(task, "train", 60, seed=3)
    assert a != make_items(task, "train", 60, seed=4)
    assert len({it.prompt for it in a}) == 60


@pytest.mark.parametrize("task", sorted(TASKS))
def test_train_and_test_are_disjoint(task):
    train = {it.prompt for s in (0, 1) for it in make_items(task, "train", 300, seed=s)}
    test = {it.prompt for it in make_items(task, "test", 100)}
    assert not train & test
    assert all(split_of(task, p) == "test" for p in test)
    assert all(split_of(task, p) == "train" for p in train)


def _expected(task: str, prompt: str) -> str:
    """An independent re-derivation of each task's answer from its prompt."""
    if task == "add3":
        a, b = re.fullmatch(r"Compute (\d+) \+ (\d+)\. Reply with the number only\.", prompt).groups()
        return str(int(a) + int(b))
    body = prompt.split(": ", 1)[1]
    if task in ("date_iso", "date_dmy"):
        m = re.fullmatch(r"(\w+) (\d+), (\d+)", body)
        month, day, year = MONTHS.index(m[1]) + 1, int(m[2]), int(m[3])
        return f"{year:04d}-{month:02d}-{day:02d}" if task == "date_iso" else f"{day:02d}/{month:02d}/{year:04d}"
    if task == "json_record":
        m = re.fullmatch(r"(\w+) is (\d+) and lives in (\w+)\.", body)
        return f'{{"name":"{m[1]}","age":{m[2]},"city":"{m[3]}"}}'
    words = body.split()
    if task == "reverse_words":
        return " ".join(words[::-1])
    if task == "sort_words":
        return " ".join(sorted(words))
    if task == "upper_words":
        return " ".join(w.upper() for w in words)
    raise AssertionError(f"no re-derivation for {task}")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_answers_follow_from_prompts(task):
    for it in make_items(task, "test", 50):
        assert it.answer == _expected(task, it.prompt), it


def test_json_record_answer_is_compact_json():
    it = make_items("json_record", "test", 1)[0]
    rec = json.loads(it.answer)
    assert set(rec) == {"name", "age", "city"} and isinstance(rec["age"], int)
    assert " " not in it.answer


def test_exact_match_strips_only_surrounding_whitespace():
    assert exact_match(" 2021-03-05\n", "2021-03-05")
    assert not exact_match("2021-03-05.", "2021-03-05")
    assert not exact_match("The date is 2021-03-05", "2021-03-05")
    assert not exact_match("", "x")


def test_errors_name_the_problem():
    with pytest.raises(DataError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(DataError, match="split"):
        make_items("add3", "dev", 3)
    with pytest.raises(DataError, match="distinct"):
        make_items("date_iso", "test", 10**6)


def test_jsonl_is_read_by_the_trainer(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from lotavec.train.data import IGNORE_INDEX, load_jsonl, read_records

    items = make_items("upper_words", "train", 5)
    path = write_jsonl(tmp_path / "d" / "upper.jsonl", items)
    recs = read_records(path)
    assert [r["messages"][1]["content"] for _, r in recs] == [it.answer for it in items]
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    data = load_jsonl(path, tok, 256)
    ex = data.examples[0]
    counted = tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])
    assert counted.startswith(items[0].answer)  # only the assistant turn counts (its end-of-turn too)
    assert answer_budget(tok, items, slack=0) == max(len(it.answer.encode()) for it in items)
