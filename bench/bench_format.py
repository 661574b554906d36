"""Ticket format benchmark: size near the floor, encode and decode+apply speed (issue 2).

Runs on the real SmolLM2-135M weights when available (``--model DIR`` or the cache filled by
``lotavec.realmodel.ensure_smollm2``), else on random weights of the same shapes. For density
1 % and 10 %: a synthetic fine-tune (Gaussian noise of 1 % of each tensor's std on every entry),
the ticket keeps the global top-k |Δ|. Prints bits/param, mask cost ÷ H(p), size ÷ naive
(1-bit bitmap + raw 16-bit values), encode and decode+apply GB/s of base bytes, and memcpy GB/s
measured in the same run. Usage: ``./dev bench bench_format [--model DIR] [--synthetic]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _util import SMOLLM2_BLOCK_SHAPES, best_of, memcpy_gbps  # noqa: E402

from lotavec.format.dtypes import from_float32, to_float32  # noqa: E402
from lotavec.format.fingerprint import base_sample  # noqa: E402
from lotavec.report import entropy_bits, ticket_report  # noqa: E402
from lotavec.ticket import TicketTensor, TicketWriter, apply_to_arrays, load_ticket  # noqa: E402


def load_tensors(model: str | None, synthetic: bool) -> tuple[str, dict[str, np.ndarray]]:
    if not synthetic:
        path = model
        if path is None:
            try:
                from lotavec.realmodel import ensure_smollm2

                path = str(ensure_smollm2())
            except Exception as e:  # noqa: BLE001 - fall back to synthetic weights, say why
                print(f"(SmolLM2 unavailable: {e}; using synthetic weights)")
        if path is not None:
            from lotavec.models import open_model, select_candidates

            src = open_model(path)
            names = select_candidates(src)
            return f"SmolLM2-135M ({path})", {n: np.array(src.array(n)) for n in names}
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in SMOLLM2_BLOCK_SHAPES:
        w = rng.standard_normal(shape, dtype=np.float32) * 0.02
        out[name] = from_float32(w, "BF16")
    return "synthetic (SmolLM2-135M shapes, N(0, 0.02))", out


def finetune(base: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for n, b in base.items():
        f = to_float32(b, "BF16")
        out[n] = from_float32(f + rng.standard_normal(f.shape, dtype=np.float32) * (0.01 * float(f.std())), "BF16")
    return out


def global_topk(base, ft, density):
    mags = {n: np.abs(to_float32(ft[n], "BF16") - to_float32(base[n], "BF16")).reshape(-1) for n in base}
    allm = np.concatenate(list(mags.values()))
    k = round(density * allm.size)
    thr = np.partition(allm, allm.size - k)[allm.size - k]
    sel = {n: np.flatnonzero(m > thr) for n, m in mags.items()}
    need = k - sum(s.size for s in sel.values())
    for n, m in mags.items():  # ties at the threshold: first in (tensor, index) order
        if need <= 0:
            break
        eq = np.flatnonzero(m == thr)[:need]
        sel[n] = np.union1d(sel[n], eq)
        need -= eq.size
    return sel


def run(density: float, base, ft, tmp: str) -> dict:
    sel = global_topk(base, ft, density)
    numel = sum(b.size for b in base.values())
    base_bytes = sum(b.nbytes for b in base.values())
    path = os.path.join(tmp, f"t{density}.safetensors")

    def encode():
        with TicketWriter(path) as w:
            for n, b in base.items():
                idx = sel[n]
                fl = ft[n].reshape(-1)
                t = TicketTensor(n, b.shape, "BF16", idx, "ulpdiff", fl[idx] - b.reshape(-1)[idx], base_sample(b), None)
                w.add(t)

    t_enc = best_of(encode, 3)
    t_dec = float("inf")
    for _ in range(3):  # apply to a fresh copy of the base each time (copy not timed)
        flat = {n: b.reshape(-1).copy() for n, b in base.items()}
        t0 = time.perf_counter()
        with load_ticket(path) as t:
            apply_to_arrays(t, flat)
        t_dec = min(t_dec, time.perf_counter() - t0)
    ok = all((flat[n][sel[n]] == ft[n].reshape(-1)[sel[n]]).all() for n in base)
    with load_ticket(path) as t:
        rep = ticket_report(t)
    nnz = rep["total_nnz"]
    naive_bits = numel * 1 + nnz * 16
    return {
        "density": density, "nnz": nnz, "bits_per_param": rep["bits_per_param"],
        "mask_vs_H": rep["mask_bits"] / (numel * entropy_bits(nnz / numel)),
        "size_vs_naive": 8 * rep["total_bytes"] / naive_bits,
        "value_bits": rep["value_bits_per_nnz"],
        "encode_gbps": base_bytes / t_enc / 1e9, "decode_apply_gbps": base_bytes / t_dec / 1e9,
        "bit_exact": ok,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF folder of a bf16 model (default: SmolLM2-135M from the cache)")
    ap.add_argument("--synthetic", action="store_true", help="use random weights of SmolLM2-135M shapes")
    ap.add_argument("--densities", default="0.01,0.1")
    a = ap.parse_args()
    what, base = load_tensors(a.model, a.synthetic)
    ft = finetune(base)
    numel = sum(b.size for b in base.values())
    print(f"weights: {what}; {len(base)} block matrices, {numel / 1e6:.1f} M params, bf16; threads={os.cpu_count()}")
    mc = memcpy_gbps()
    print(f"memcpy (np.copyto, 1 GiB): {mc:.2f} GB/s")
    print("| density | bits/param | mask ÷ H(p) | size ÷ naive | value bits | encode GB/s | decode+apply GB/s | bit-exact |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for d in (float(x) for x in a.densities.split(",")):
            t0 = time.perf_counter()
            r = run(d, base, ft, tmp)
            print(f"| {d:.0%} | {r['bits_per_param']:.3f} | {r['mask_vs_H']:.3f} | {r['size_vs_naive']:.3f} | "
                  f"{r['value_bits']:.2f} | {r['encode_gbps']:.2f} | {r['decode_apply_gbps']:.2f} | {r['bit_exact']} |",
                  flush=True)
            _ = math.isfinite(time.perf_counter() - t0)


if __name__ == "__main__":
    main()
