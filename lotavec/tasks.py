"""Small deterministic tasks with exact-match scoring, for demos and quality benchmarks.

Each :class:`Task` turns a seeded random generator into ``(prompt, answer)`` pairs whose answer is
a function of the prompt (no ambiguity, so exact match after ``strip()`` is a fair score). A
pretrained instruct model scores ~0 on them at first (it answers in prose or in its own format)
and learns one in a few dozen to a few hundred fine-tuning steps, which makes forgetting and
merging measurable in minutes.

Train and test items are disjoint by construction: an item belongs to the test split when a hash
of its task name and prompt falls in the test bucket (one in :data:`TEST_BUCKETS`), to the train
split otherwise, whatever seed drew it.

Example:
    >>> train = make_items("date_iso", "train", 400, seed=0)
    >>> write_jsonl("date_train.jsonl", train)  # doctest: +SKIP
    >>> score_items(model, tokenizer, make_items("date_iso", "test", 100))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["TASKS", "TEST_BUCKETS", "Item", "Task", "EvalResult", "get_task", "make_items", "split_of",
           "write_jsonl", "exact_match", "generate_answers", "score_items"]

#: An item is in the test split when ``hash % TEST_BUCKETS == 0`` (one item in eight).
TEST_BUCKETS = 8

_MAX_STALE_DRAWS = 50_000
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_NAMES = ("Alice", "Bruno", "Chen", "Dana", "Emil", "Fatima", "Greta", "Hugo", "Ines", "Jonas", "Kenji",
          "Laura", "Mateo", "Nadia", "Oscar", "Priya", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera",
          "Wei", "Ximena", "Yusuf", "Zoe", "Arjun", "Beatriz", "Carlos", "Dmitri", "Elena", "Farid")
_CITIES = ("Paris", "Lisbon", "Oslo", "Cairo", "Lima", "Tokyo", "Berlin", "Madrid", "Rome", "Dublin",
           "Vienna", "Prague", "Athens", "Nairobi", "Seoul", "Toronto", "Sydney", "Denver", "Quito",
           "Manila", "Dakar", "Hanoi", "Zurich", "Bogota")
_WORDS = ("apple", "river", "stone", "cloud", "table", "green", "music", "window", "tiger", "paper",
          "bread", "chair", "light", "ocean", "pencil", "garden", "silver", "candle", "forest", "mirror",
          "rocket", "yellow", "button", "winter", "castle", "planet", "bridge", "coffee", "dragon", "basket",
          "orange", "pillow", "summer", "ladder", "marble", "anchor", "violin", "jacket", "tunnel", "feather")


@dataclass(frozen=True)
class Item:
    """One example: the user prompt and the exact expected answer."""

    prompt: str
    answer: str

    def messages(self) -> list[dict[str, str]]:
        """The chat the trainer reads (``{"messages": [...]}`` lines)."""
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


@dataclass(frozen=True)
class Task:
    """A deterministic task: ``draw(rng)`` returns one ``(prompt, answer)``.

    Attributes:
        name: identifier (also salts the train/test hash).
        description: one line for tables and docs.
        draw: the generator of one item from a :class:`random.Random`.
    """

    name: str
    description: str
    draw: Callable[[random.Random], tuple[str, str]] = field(repr=False)


def _date_iso(rng: random.Random) -> tuple[str, str]:
    m = rng.randrange(12)
    d = rng.randint(1, _DAYS[m])
    y = rng.randint(1950, 2049)
    return (f"Write this date as YYYY-MM-DD: {_MONTHS[m]} {d}, {y}", f"{y:04d}-{m + 1:02d}-{d:02d}")


def _date_dmy(rng: random.Random) -> tuple[str, str]:
    m = rng.randrange(12)
    d = rng.randint(1, _DAYS[m])
    y = rng.randint(1950, 2049)
    return (f"Write this date as DD/MM/YYYY: {_MONTHS[m]} {d}, {y}", f"{d:02d}/{m + 1:02d}/{y:04d}")


def _json_record(rng: random.Random) -> tuple[str, str]:
    name, city, age = rng.choice(_NAMES), rng.choice(_CITIES), rng.randint(18, 90)
    answer = json.dumps({"name": name, "age": age, "city": city}, separators=(",", ":"))
    return f"Compact JSON with keys name, age, city: {name} is {age} and lives in {city}.", answer


def _reverse_words(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(_WORDS, 4)
    return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))


def _sort_words(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(_WORDS, 4)
    return f"Sort these words alphabetically: {' '.join(words)}", " ".join(sorted(words))


def _upper_words(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(_WORDS, 4)
    return f"Write these words in capital letters: {' '.join(words)}", " ".join(w.upper() for w in words)


def _add3(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return f"Compute {a} + {b}. Reply with the number only.", str(a + b)


#: The tasks, by name.
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("date_iso", "month-name date → YYYY-MM-DD", _date_iso),
    Task("date_dmy", "month-name date → DD/MM/YYYY", _date_dmy),
    Task("json_record", "sentence → compact JSON {name, age, city}", _json_record),
    Task("reverse_words", "four words → the same words in reverse order", _reverse_words),
    Task("sort_words", "four words → the same words in alphabetical order", _sort_words),
    Task("upper_words", "four words → the same words in capital letters", _upper_words),
    Task("add3", "three-digit addition, bare number", _add3),
)}


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        DataError: unknown name (the message lists the known ones).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


def split_of(task: str, prompt: str) -> str:
    """``"test"`` or ``"train"``: the split an item belongs to, from a hash of task name and prompt."""
    h = int.from_bytes(hashlib.sha256(f"{task}\x00{prompt}".encode()).digest()[:8], "little")
    return "test" if h % TEST_BUCKETS == 0 else "train"


def make_items(task: str | Task, split: str, n: int, *, seed: int = 0) -> list[Item]:
    """``n`` distinct items of ``split``, deterministic from ``(task, split, seed)``.

    Args:
        task: a task name or :class:`Task`.
        split: ``"train"`` or ``"test"``; the two never share an item (see :func:`split_of`).
        n: how many items.
        seed: which items are drawn (different seeds give different, overlapping samples).

    Returns:
        The items, in draw order.

    Raises:
        DataError: unknown task or split, or the task cannot supply ``n`` distinct items.
    """
    t = task if isinstance(task, Task) else get_task(task)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if n < 0:
        raise DataError(f"number of items must be ≥ 0, got {n}")
    rng = random.Random(f"{t.name}/{split}/{seed}")
    seen: set[str] = set()
    out: list[Item] = []
    stale = 0  # draws since the last new item: the task's item space is exhausted when this grows large
    while len(out) < n:
        prompt, answer = t.draw(rng)
        if prompt in seen or split_of(t.name, prompt) != split:
            stale += 1
            if stale > _MAX_STALE_DRAWS:
                raise DataError(f"task {t.name!r}: found only {len(out)} distinct {split} items of the {n} asked "
                                f"({_MAX_STALE_DRAWS} draws in a row gave nothing new); ask for fewer")
            continue
        stale = 0
        seen.add(prompt)
        out.append(Item(prompt, answer))
    return out


def write_jsonl(path: str | os.PathLike, items: Sequence[Item]) -> Path:
    """Write items as ``{"messages": [user, assistant]}`` lines (what ``lotavec train`` reads).

    Returns:
        The path written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"messages": it.messages()}, ensure_ascii=False) + "\n")
    os.replace(tmp, p)
    return p


def exact_match(output: str, answer: str) -> bool:
    """True when the generated text equals the answer after stripping surrounding whitespace."""
    return output.strip() == answer.strip()


@dataclass
class EvalResult:
    """Exact-match evaluation of one model on one item list.

    Attributes:
        score: fraction of items answered exactly (0 for no items).
        correct, n: counts.
        outputs: the generated texts, in item order.
        seconds: wall time of generation.
    """

    score: float
    correct: int
    n: int
    outputs: list[str]
    seconds: float


def _prompt_texts(tokenizer, prompts: Sequence[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def generate_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 32,
                     bf16: bool = False) -> list[str]:
    """Greedy answers of a chat model, in batches (left padding), decoded without special tokens.

    Args:
        model: a ``transformers`` causal LM (left on its device; put in eval mode while generating).
        tokenizer: its tokenizer (chat template; pad token, else EOS, pads).
        prompts: user messages, one per answer.
        max_new_tokens: generation budget per answer (stops earlier at EOS).
        batch_size: prompts per ``generate`` call (prompts are grouped by length to pad less).
        bf16: run under bf16 autocast.

    Returns:
        The answers, in the order of ``prompts``.
    """
    import torch

    from .testing import _quiet_transformers

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = _prompt_texts(tokenizer, prompts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # torch 2.13 on CPU: when no weight requires grad, generate's first step runs the LM head as a
    # bmm against a batch-expanded copy of the weight (~6x slower here). Under no_grad the flag
    # changes nothing else, so set it for the call and put it back.
    frozen = [p for p in model.parameters() if p.is_floating_point() and not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=False)
            enc = {k: v.to(dev) for k, v in enc.items()}
            with torch.no_grad(), _quiet_transformers(), \
                    torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                     eos_token_id=tokenizer.eos_token_id, top_p=None, top_k=None, temperature=None)
            new = gen[:, enc["input_ids"].shape[1]:].cpu()
            for j, i in enumerate(idx):
                out[i] = tokenizer.decode(new[j], skip_special_tokens=True)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    return out


def answer_budget(tokenizer, items: Sequence[Item], slack: int = 2) -> int:
    """Tokens needed for the longest answer of ``items`` plus ``slack`` (room for EOS and one more)."""
    return max((len(tokenizer(it.answer, add_special_tokens=False)["input_ids"]) for it in items), default=0) + slack


def score_items(model, tokenizer, items: Sequence[Item], *, batch_size: int = 32, bf16: bool = False,
                max_new_tokens: int | None = None) -> EvalResult:
    """Exact-match score of ``model`` on ``items`` by batched greedy generation.

    Args:
        model, tokenizer: a chat causal LM and its tokenizer.
        items: the evaluation items.
        batch_size, bf16: see :func:`generate_answers`.
        max_new_tokens: default :func:`answer_budget` of the items (longest answer + 2 tokens), so a
            model that starts with the right answer but goes on is still counted wrong.

    Returns:
        :class:`EvalResult`.
    """
    import time

    t0 = time.perf_counter()
    if not items:
        return EvalResult(0.0, 0, 0, [], 0.0)
    budget = max_new_tokens if max_new_tokens is not None else answer_budget(tokenizer, items)
    outs = generate_answers(model, tokenizer, [it.prompt for it in items], max_new_tokens=budget,
                            batch_size=batch_size, bf16=bf16)
    correct = sum(exact_match(o, it.answer) for o, it in zip(outs, items))
    return EvalResult(correct / len(items), correct, len(items), outs, time.perf_counter() - t0)


def describe(task: str) -> dict[str, Any]:
    """``{"name", "description", "example": {"prompt", "answer"}}`` of a task (first test item)."""
    t = get_task(task)
    ex = make_items(t, "test", 1)[0]
    return {"name": t.name, "description": t.description, "example": {"prompt": ex.prompt, "answer": ex.answer}}
