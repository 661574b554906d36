"""Training data: JSONL files → tokenized examples with loss masks → padded batches.

Each non-blank line of a JSONL file is one JSON object of one of three shapes:

* ``{"prompt": str, "completion": str}`` — prompt and completion are tokenized separately and
  concatenated (the tokenizer's special tokens, e.g. BOS, before the prompt; EOS after the
  completion). Only completion tokens (and the EOS) count in the loss.
* ``{"messages": [{"role": str, "content": str}, ...]}`` — rendered with the tokenizer's chat
  template; only the assistant turns (their content and end-of-turn tokens) count.
* ``{"text": str}`` — every token counts (EOS appended).

Non-counted positions carry ``labels == -100``. Examples are truncated to ``max_length`` tokens;
examples left with no counted token are dropped (and counted in the stats). Malformed lines raise
:class:`~lotavec.errors.DataError` naming the file, the line and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, NotFoundError

__all__ = ["IGNORE_INDEX", "TokenizedData", "Collator", "file_fingerprint", "read_records",
           "encode_record", "load_jsonl", "batch_stream", "fixed_batches"]

#: Label value of positions that do not count in the loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100

Progress = Callable[[str, int, int], None]


def file_fingerprint(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of the file's bytes (data provenance).

    Raises:
        NotFoundError: the file does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"data file {str(p)!r} does not exist")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _fail(path, line: int, what: str) -> DataError:
    return DataError(f"{path}:{line}: {what}")


def _check_messages(path, line: int, messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise _fail(path, line, f"'messages' must be a non-empty list, found {type(messages).__name__}"
                    + (" (empty)" if isinstance(messages, list) else ""))
    has_assistant = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _fail(path, line, f"messages[{i}] must be an object with 'role' and 'content', found {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise _fail(path, line, f"messages[{i}] has no {key!r} key (found keys {sorted(m)})")
            if not isinstance(m[key], str):
                raise _fail(path, line, f"messages[{i}].{key} must be a string, found {type(m[key]).__name__}")
        if m["role"] == "assistant" and m["content"].strip():
            has_assistant = True
    if not has_assistant:
        raise _fail(path, line, "'messages' has no assistant turn with content: nothing to train on "
                    "(only assistant turns count in the loss)")


def _check_record(path, line: int, rec) -> str:
    """Validate one parsed line; return its shape: ``"messages"``, ``"prompt"`` or ``"text"``."""
    if not isinstance(rec, dict):
        raise _fail(path, line, f"expected a JSON object, found {type(rec).__name__}")
    if "messages" in rec:
        _check_messages(path, line, rec["messages"])
        return "messages"
    if "prompt" in rec or "completion" in rec:
        for key in ("prompt", "completion"):
            if key not in rec:
                raise _fail(path, line, f"has 'prompt' or 'completion' but no {key!r} key; both are needed")
            if not isinstance(rec[key], str):
                raise _fail(path, line, f"{key!r} must be a string, found {type(rec[key]).__name__}")
        if not rec["completion"].strip():
            raise _fail(path, line, "empty 'completion': nothing to train on")
        return "prompt"
    if "text" in rec:
        if not isinstance(rec["text"], str):
            raise _fail(path, line, f"'text' must be a string, found {type(rec['text']).__name__}")
        if not rec["text"].strip():
            raise _fail(path, line, "empty 'text'")
        return "text"
    raise _fail(path, line, 'missing keys: expected {"prompt", "completion"}, {"messages"} or {"text"}; '
                f"found keys {sorted(rec)}")


def read_records(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """Parse and validate a JSONL data file.

    Returns:
        ``[(line number, record)]`` for every non-blank line (line numbers start at 1).

    Raises:
        NotFoundError: the file does not exist.
        DataError: bad UTF-8 or JSON, wrong keys or types, empty completion, no assistant turn,
            or no example at all; the message names the file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"data file {str(p)!r} does not exist")
    out = []
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _fail(p, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise _fail(p, lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
            _check_record(p, lineno, rec)
            out.append((lineno, rec))
    if not out:
        raise DataError(f"{p}: no examples (the file is empty or only blank lines)")
    return out


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _with_eos(tokenizer, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def _render(tokenizer, messages, *, gen: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _encode_messages(tokenizer, messages, where: str) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: 'messages' needs a tokenizer with a chat template, and this one has "
                        "none; use {\"prompt\", \"completion\"} lines or a chat model's tokenizer")
    full = _render(tokenizer, messages, gen=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m["content"]:
            continue
        end = _render(tokenizer, messages[: i + 1], gen=False)
        start = _render(tokenizer, messages[:i], gen=True) if i else None
        if start is not None and end.startswith(start):
            begin = len(start)
        else:  # first turn, or a template that adds text (a default system prompt) before it
            begin = end.rfind(m["content"])
        if not full.startswith(end) or begin < 0:
            raise DataError(f"{where}: the tokenizer's chat template does not render the conversation "
                            f"incrementally (turn {i} is not a prefix of the whole), so assistant tokens "
                            "cannot be located; use {\"prompt\", \"completion\"} lines")
        spans.append((begin, len(end)))
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{where}: 'messages' needs a fast tokenizer (character offsets)")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for k, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(s <= a < e for s, e in spans):
            labels[k] = ids[k]
    return ids, labels


def encode_record(record: dict, tokenizer, *, where: str = "record") -> tuple[list[int], list[int]]:
    """Tokenize one validated record into ``(input_ids, labels)`` (labels ``-100`` where not counted).

    Args:
        record: a dict of one of the three shapes (see the module docstring).
        tokenizer: a ``transformers`` tokenizer.
        where: prefix for error messages (``"file:line"``).

    Raises:
        DataError: ``messages`` with a tokenizer that has no (incremental) chat template.
    """
    if "messages" in record:
        return _encode_messages(tokenizer, record["messages"], where)
    if "prompt" in record:
        p = _ids(tokenizer, record["prompt"], True)
        c = _with_eos(tokenizer, _ids(tokenizer, record["completion"], False))
        return p + c, [IGNORE_INDEX] * len(p) + c
    ids = _with_eos(tokenizer, _ids(tokenizer, record["text"], True))
    return ids, list(ids)


@dataclass
class TokenizedData(Sequence):
    """Tokenized examples of one file; a ``Sequence`` of ``{"input_ids", "labels"}`` dicts.

    It can be given to ``transformers.Trainer`` as ``train_dataset`` with :class:`Collator`.
    """

    path: str
    fingerprint: str
    max_length: int
    examples: list[dict] = field(default_factory=list)
    n_records: int = 0
    n_truncated: int = 0
    n_dropped: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    @property
    def n_tokens(self) -> int:
        """Total tokens of the kept examples."""
        return sum(len(e["input_ids"]) for e in self.examples)

    @property
    def n_loss_tokens(self) -> int:
        """Tokens that count in the loss (a position's label is predicted from the ones before it)."""
        return sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in self.examples)

    def stats(self) -> dict:
        """Provenance numbers: path, fingerprint, counts."""
        return {"path": self.path, "fingerprint": self.fingerprint, "records": self.n_records,
                "examples": len(self), "truncated": self.n_truncated, "dropped_no_loss_tokens": self.n_dropped,
                "tokens": self.n_tokens, "loss_tokens": self.n_loss_tokens, "max_length": self.max_length}


def load_jsonl(path: str | os.PathLike, tokenizer, max_length: int = 512, *,
               progress: Progress | None = None) -> TokenizedData:
    """Read, validate and tokenize a JSONL data file.

    Args:
        path: the ``.jsonl`` file.
        tokenizer: a ``transformers`` tokenizer (a chat template is needed for ``messages`` lines).
        max_length: examples are cut to this many tokens (right truncation).
        progress: optional ``progress(stage, done, total)``.

    Returns:
        :class:`TokenizedData` with ``fingerprint`` = sha256 of the file bytes.

    Raises:
        NotFoundError, DataError: see :func:`read_records`; also when no example keeps a
            counted token within ``max_length``.
    """
    if max_length < 2:
        raise DataError(f"max_length must be at least 2 tokens, found {max_length}")
    records = read_records(path)
    data = TokenizedData(path=str(path), fingerprint=file_fingerprint(path), max_length=max_length,
                         n_records=len(records))
    for done, (lineno, rec) in enumerate(records, start=1):
        ids, labels = encode_record(rec, tokenizer, where=f"{path}:{lineno}")
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            data.n_truncated += 1
        if all(t == IGNORE_INDEX for t in labels[1:]):
            data.n_dropped += 1
        else:
            data.examples.append({"input_ids": ids, "labels": labels})
        if progress is not None:
            progress("tokenize", done, len(records))
    if not data.examples:
        raise DataError(f"{path}: no example keeps a completion token within max_length={max_length} "
                        f"({data.n_dropped} dropped); raise --max-length or shorten the prompts")
    return data


class Collator:
    """Pad a list of examples into a batch (right padding).

    Args:
        pad_token_id: id used for padding ``input_ids`` (labels are padded with ``-100``,
            ``attention_mask`` with 0).
        pad_to_multiple_of: round the padded length up to a multiple of this.

    Returns (when called): ``{"input_ids", "attention_mask", "labels"}`` int64 tensors.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    @classmethod
    def for_tokenizer(cls, tokenizer, pad_to_multiple_of: int | None = None) -> Collator:
        """A collator padding with the tokenizer's pad token (its EOS when it has none)."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise DataError("the tokenizer has neither a pad nor an EOS token; give Collator a pad_token_id")
        return cls(pad, pad_to_multiple_of)

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        n = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            n = (n + m - 1) // m * m
        ids = torch.full((len(examples), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((len(examples), n), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[i, :k] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.as_tensor(e["labels"], dtype=torch.long)
            attn[i, :k] = 1
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def batch_stream(examples: Sequence[dict], batch_size: int, collator: Collator, *, seed: int = 0,
                 shuffle: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """An endless stream of batches: epoch after epoch, reshuffled each epoch from ``seed``.

    The last batch of an epoch may be smaller. Deterministic for a given seed.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, found {batch_size}")
    if not len(examples):
        raise DataError("no examples to draw batches from")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(examples)) if shuffle else np.arange(len(examples))
        for start in range(0, len(order), batch_size):
            yield collator([examples[int(i)] for i in order[start:start + batch_size]])


def fixed_batches(examples: Sequence[dict], batch_size: int, collator: Collator) -> list[dict[str, torch.Tensor]]:
    """All examples once, in order, as batches (for evaluation)."""
    return [collator(list(examples[i:i + batch_size])) for i in range(0, len(examples), batch_size)]
