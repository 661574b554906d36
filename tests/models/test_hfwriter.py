"""Streaming sharded writer, atomic output folders, side-file copying."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lotavec.errors import ModelError, OutputExistsError
from lotavec.hfwriter import (
    ShardedWriter,
    atomic_output_dir,
    copy_model_files,
    parse_size,
    plan_shards,
)
from lotavec.models import open_model
from lotavec.torchio import to_torch


def _copy_model(src_dir, out_dir, **kw):
    with open_model(src_dir) as src, atomic_output_dir(out_dir) as tmp:
        plan = [(n, *src.info(n)) for n in src.names()]
        with ShardedWriter(tmp, plan, **kw) as w:
            for n in src.names():
                w.write(n, src.array(n))
        copy_model_files(src_dir, tmp)
    return out_dir


def test_parse_size_and_plan():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(100) == 100
    assert parse_size("1.5MB") == 1_500_000
    with pytest.raises(ModelError, match="5 parsecs"):
        parse_size("5 parsecs")
    entries = [("a", "F32", (10,)), ("b", "F32", (30,)), ("c", "F32", (5,)), ("d", "F32", (5,))]
    # 40, 120, 20, 20 bytes with a 100-byte limit: b is oversized and alone; c+d share a shard
    assert plan_shards(entries, 100) == [[0], [1], [2, 3]]
    assert plan_shards(entries, 10**6) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("max_shard", ["100KB", "5GB"])
def test_copy_loads_with_safetensors_and_transformers(tiny_model_dirs, tmp_path, max_shard):
    from transformers import AutoModelForCausalLM

    src_dir = tiny_model_dirs["llama"]
    out = _copy_model(src_dir, tmp_path / "out", max_shard_size=max_shard)
    names = sorted(p.name for p in out.iterdir())
    if max_shard == "5GB":
        assert "model.safetensors" in names and "model.safetensors.index.json" not in names
    else:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) >= 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert index["metadata"]["total_size"] == sum(
            os.path.getsize(out / s) for s in shards) - sum(_header_len(out / s) for s in shards)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert f in names
    with open_model(src_dir) as a, open_model(out) as b:
        assert a.names() == b.names()
        for n in a.names():
            np.testing.assert_array_equal(a.array(n), b.array(n))
            with safe_open(b.file_of(n), "pt") as st:
                assert torch.equal(st.get_tensor(n), to_torch(a.array(n), "BF16"))
    ref = AutoModelForCausalLM.from_pretrained(src_dir)
    got = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 40, 50, 60, 70]])
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, got(ids).logits)


def _header_len(path):
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_write_in_pieces_and_plan_checks(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    plan = [("x", "F32", (4, 3)), ("y", "BF16", (2,))]
    with ShardedWriter(tmp_path, plan, metadata={"note": "hi"}) as w:
        with pytest.raises(ModelError, match="expected 'x', got 'y'"):
            w.write("y", np.zeros(2, np.uint16))
        with pytest.raises(ModelError, match="planned shape"):
            w.write("x", x.reshape(3, 4))
        w.write("x", x[:1])
        w.write("x", x[1:])
        with pytest.raises(ModelError, match="planned as BF16"):
            w.write("y", np.zeros(2, np.float32))
        w.write("y", np.array([0x3F80, 0x4000], np.uint16))
    with safe_open(tmp_path / "model.safetensors", "pt") as st:
        assert st.metadata() == {"format": "pt", "note": "hi"}
        assert torch.equal(st.get_tensor("x"), torch.from_numpy(x))
        assert st.get_tensor("y").tolist() == [1.0, 2.0]
    w2 = ShardedWriter(tmp_path / "..", [("z", "F32", (1,))])
    with pytest.raises(ModelError, match="never written or incomplete, starting with 'z'"):
        w2.close()
    with pytest.raises(ModelError, match="more than once"):
        ShardedWriter(tmp_path, [("z", "F32", (1,)), ("z", "F32", (1,))])


def test_atomic_dir_success_failure_and_overwrite(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(OutputExistsError, match="already exists"):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "one"
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folders left


def test_killed_writer_never_leaves_partial_output(tmp_path):
    out = tmp_path / "out"
    code = (
        "import os, signal, numpy as np\n"
        "from lotavec.hfwriter import ShardedWriter, atomic_output_dir\n"
        f"with atomic_output_dir({str(out)!r}) as tmp:\n"
        "    w = ShardedWriter(tmp, [('a', 'F32', (1000,)), ('b', 'F32', (1000,))], max_shard_size=4000)\n"
        "    w.write('a', np.zeros(1000, np.float32))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert not out.exists()
    assert [p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()] == [True]


def test_copy_model_files_skips_weights(tiny_pair, tmp_path):
    base, _ = tiny_pair
    (tmp_path / "dst").mkdir()
    copied = copy_model_files(base, tmp_path / "dst", exclude=["generation_config.json"])
    assert copied == ["chat_template.jinja", "config.json", "tokenizer.json", "tokenizer_config.json"]


def test_atomic_dir_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "perm") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "perm").stat().st_mode & 0o777 == 0o755


def test_flush_behind_writes_the_same_bytes_and_starts_write_back(tiny_model_dirs, tmp_path, monkeypatch):
    import lotavec.hfwriter as hw

    calls = []
    real = hw._sync_file_range()
    if real is None:
        pytest.skip("no sync_file_range on this platform")

    def spy():
        def fn(fd, off, n, flags):
            calls.append((off, n, flags))
            return real(fd, off, n, flags)
        return fn

    monkeypatch.setattr(hw, "_FLUSH_STEP", 4096)  # a request every few tensors of the tiny model
    monkeypatch.setattr(hw, "_sync_file_range", spy)
    src_dir = tiny_model_dirs["llama"]
    a = _copy_model(src_dir, tmp_path / "a", max_shard_size="100KB", flush_behind=True)
    b = _copy_model(src_dir, tmp_path / "b", max_shard_size="100KB")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert len(calls) > 3 and all(flags == hw._SYNC_FILE_RANGE_WRITE for _, _, flags in calls)
    # per shard, the requested ranges are consecutive and cover everything written after the header
    starts = [off for off, _, _ in calls]
    assert starts.count(0) == len([f for f in files if f.endswith(".safetensors")])


def test_tensors_written_in_any_order_from_threads_give_the_same_files(tiny_model_dirs, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    src_dir = tiny_model_dirs["llama"]
    ref = _copy_model(src_dir, tmp_path / "ref", max_shard_size="100KB")
    out = tmp_path / "any"
    out.mkdir()
    with open_model(src_dir) as src:
        names = src.names()
        with ShardedWriter(out, [(n, *src.info(n)) for n in names], max_shard_size="100KB") as w:
            def put(n):
                a = src.array(n).reshape(-1)
                half = a.size // 2  # two pieces, the second first; the kernel-style route for some
                if half and len(n) % 2:
                    fd, off = w.target(n)
                    os.pwrite(fd, a.view(np.uint8).tobytes(), off)
                    w.finish(n)
                    return
                w.write_at(n, a[half:], half * a.itemsize)
                w.write_at(n, a[:half], 0)
            with ThreadPoolExecutor(4) as ex:
                list(ex.map(put, reversed(names)))
    files = sorted(p.name for p in ref.iterdir() if p.name.endswith((".safetensors", ".index.json")))
    assert len(files) > 2
    for f in files:
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f


def test_positional_writes_are_checked(tmp_path):
    w = ShardedWriter(tmp_path, [("a", "F32", (4,)), ("b", "BF16", (2, 2))])
    with pytest.raises(ModelError, match="'c' is not in the write plan"):
        w.write_at("c", np.zeros(1, np.float32))
    with pytest.raises(ModelError, match=r"bytes 8\.\.24 written, plan says 16"):
        w.write_at("a", np.zeros(4, np.float32), 8)
    with pytest.raises(ModelError, match="planned as BF16"):
        w.write_at("b", np.zeros(4, np.float32))
    w.write_at("a", np.ones(2, np.float32), 8)  # half of "a" only
    w.write_at("b", np.zeros((2, 2), np.uint16))
    with pytest.raises(ModelError, match="never written or incomplete, starting with 'a'"):
        w.close()
    with pytest.raises(ModelError, match="writer is closed"):
        w.write_at("a", np.ones(2, np.float32))
