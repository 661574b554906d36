"""Pictures of tickets: a per-layer × module-type density heatmap, and how tickets overlap.

matplotlib is an optional extra (``pip install 'lotavec[plot]'``), imported only when a plot is
drawn. Figures are built on matplotlib's object API with the Agg canvas — never ``pyplot`` — so
drawing a plot changes no global state (backend, rcParams, open figures). PNGs are written
atomically (temporary file beside the target, then ``os.replace``); their pixel size is exactly
``size × dpi``.

Example:
    >>> from lotavec.plots import plot_density
    >>> plot_density(load_ticket("math.lotavec.safetensors"), "math.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MissingDependencyError
from .merge.overlap import LAYER_RE, OverlapReport
from .ticket import Ticket

#: Most cells annotated with their value; larger grids are drawn without numbers.
MAX_ANNOTATED = 600

#: Column order of well-known module types (attention, then MLP); others follow by name.
MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj", "query_key_value", "attention.dense",
                "dense", "dense_h_to_4h", "dense_4h_to_h", "fc1", "fc2", "out_proj")


@dataclass(frozen=True)
class DensityGrid:
    """Densities of a ticket by layer (rows) and module type (columns).

    Attributes:
        rows: layer labels (``"0"``, ``"1"``, ..., then ``"other"`` for tensors outside layers).
        cols: module-type labels (``"q_proj"``, ``"c_attn"``, ``"attn.c_proj"``...).
        nnz, numel: ``rows × cols`` int64 arrays, summed over the tensors in each cell
            (``numel`` 0 where the ticket holds no tensor).
    """

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    nnz: np.ndarray
    numel: np.ndarray

    @property
    def density(self) -> np.ndarray:
        """nnz ÷ numel per cell, NaN where the ticket holds no tensor."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.numel > 0, self.nnz / np.maximum(self.numel, 1), np.nan)


def _mpl() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or a clear error when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError(
            f"plots need matplotlib, which is not installed ({e}); install it with: pip install 'lotavec[plot]'"
        ) from None
    return Figure, FigureCanvasAgg


def _within_layer(name: str) -> tuple[str, str]:
    """``(layer, module path inside the layer)`` of a tensor name, ``.weight`` dropped."""
    m = LAYER_RE.search(name)
    layer, path = (m.group(1), name[m.end():]) if m else ("other", name)
    if path.endswith(".weight"):
        path = path[: -len(".weight")]
    return layer, path


def _short_labels(paths: Iterable[str]) -> dict[str, str]:
    """Shortest dotted suffix of each path that no other path shares (``attn.c_proj`` vs ``mlp.c_proj``)."""
    paths = sorted(set(paths))
    out = {}
    for p in paths:
        parts = p.split(".")
        first = 2 if len(parts) > 1 and parts[-1] in ("bias", "scale", "g_idx") else 1  # name the module, not "bias"
        for k in range(first, len(parts) + 1):
            cand = ".".join(parts[-k:])
            if not any(q != p and (q == cand or q.endswith("." + cand)) for q in paths):
                break
        out[p] = cand
    return out


def density_grid(ticket: Ticket) -> DensityGrid:
    """Group a ticket's tensors into a layer × module-type grid (no tensor data is decoded).

    Layers come from names like ``model.layers.12.``, ``transformer.h.3.``,
    ``gpt_neox.layers.3.`` (see :func:`lotavec.merge.overlap.layer_of`); tensors outside layers
    (embeddings, final norm, LM head) form the row ``"other"``. Module types are the module path
    inside the layer, shortened to the last component unless that is ambiguous
    (GPT-2's ``attn.c_proj`` and ``mlp.c_proj``).

    Args:
        ticket: a ticket (file-backed or in memory).

    Returns:
        :class:`DensityGrid`.
    """
    cells: dict[tuple[str, str], list[int]] = {}
    for name in ticket.names:
        info = ticket.info(name)
        layer, path = _within_layer(name)
        c = cells.setdefault((layer, path), [0, 0])
        c[0] += int(info["nnz"])
        c[1] += int(info["numel"])
    labels = _short_labels(p for _, p in cells)
    rank = {c: i for i, c in enumerate(MODULE_ORDER)}
    rows = sorted({r for r, _ in cells}, key=lambda r: (1, 0) if r == "other" else (0, int(r)))
    cols = sorted(set(labels.values()), key=lambda c: (rank.get(c, len(rank)), c))
    nnz = np.zeros((len(rows), len(cols)), np.int64)
    numel = np.zeros_like(nnz)
    ri = {r: i for i, r in enumerate(rows)}
    ci = {c: j for j, c in enumerate(cols)}
    for (r, p), (n, m) in cells.items():
        nnz[ri[r], ci[labels[p]]] += n
        numel[ri[r], ci[labels[p]]] += m
    return DensityGrid(tuple(rows), tuple(cols), nnz, numel)


def _save(fig: Any, canvas_cls: Any, path: str | os.PathLike, dpi: int) -> str:
    """Render ``fig`` to a PNG at ``path`` atomically."""
    path = os.fspath(path)
    canvas_cls(fig)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".lotavec-plot-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _percent(x: float) -> str:
    if x == 0:
        return "0"
    if x >= 0.1:
        return f"{100 * x:.0f}%"
    return f"{100 * x:.1f}%" if x >= 0.001 else f"{100 * x:.2g}%"


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def plot_density(ticket: Ticket, path: str | os.PathLike, *, title: str | None = None,
                 size: tuple[float, float] | None = None, dpi: int = 100) -> str:
    """Save a heatmap of a ticket's density per layer (rows) and module type (columns).

    Each cell is annotated with its density (grids above :data:`MAX_ANNOTATED` cells are not
    annotated); cells the ticket does not touch are blank. The title gives the ticket's totals:
    tensors, stored entries of the touched elements, density and (file-backed) bytes.

    Args:
        ticket: the ticket.
        path: PNG file to write (replaced atomically).
        title: first title line (default: the ticket's file name).
        size: figure size in inches ``(width, height)``; default grows with the grid.
        dpi: pixels per inch; the PNG is ``round(size × dpi)`` pixels.

    Returns:
        ``path``.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    Figure, Canvas = _mpl()
    g = density_grid(ticket)
    nr, nc = len(g.rows), len(g.cols)
    if size is None:
        size = (min(4.0 + 0.9 * nc, 30.0), min(2.2 + 0.32 * nr, 40.0))
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    dens = g.density
    data = np.ma.masked_invalid(dens)
    vmax = float(np.nanmax(dens)) if nr and nc and np.isfinite(dens).any() else 1.0
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax if vmax > 0 else 1.0,
                   interpolation="nearest")
    ax.set_facecolor("#e8e8e8")
    ax.set_xticks(range(nc), labels=list(g.cols), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(nr), labels=list(g.rows), fontsize=8 if nr <= 48 else 5)
    ax.set_xlabel("module type")
    ax.set_ylabel("layer")
    if nr * nc <= MAX_ANNOTATED:
        mid = (vmax if vmax > 0 else 1.0) / 2
        for i in range(nr):
            for j in range(nc):
                if g.numel[i, j]:
                    v = float(dens[i, j])
                    ax.text(j, i, _percent(v), ha="center", va="center", fontsize=7,
                            color="white" if v < mid else "black")
    from matplotlib.ticker import PercentFormatter

    fig.colorbar(im, ax=ax, label="density (nnz / elements)", shrink=0.9, format=PercentFormatter(1.0))
    nnz, numel = int(g.nnz.sum()), int(g.numel.sum())
    head = title or (os.path.basename(ticket.path) if ticket.path else "ticket")
    sub = (f"{len(ticket)} tensors, {_human(nnz)} of {_human(numel)} entries "
           f"(density {_percent(nnz / numel if numel else 0.0)})")
    if ticket.path:
        sub += f", {_human(os.path.getsize(ticket.path))}B"
    ax.set_title(f"{head}\n{sub}", fontsize=10)
    return _save(fig, Canvas, path, dpi)


def _labels(names: Sequence[str], n: int = 22) -> list[str]:
    out = []
    for s in names:
        s = os.path.basename(s) or s
        for suffix in (".lotavec.safetensors", ".safetensors"):
            if s.endswith(suffix) and len(s) > len(suffix):
                s = s[: -len(suffix)]
                break
        out.append(s if len(s) <= n else s[: n - 1] + "…")
    return out


def plot_overlap(report: OverlapReport, path: str | os.PathLike, *, title: str | None = None,
                 size: tuple[float, float] | None = None, dpi: int = 100) -> str:
    """Save the pairwise overlap matrix and the per-layer overlap of several tickets.

    Left: a ``tickets × tickets`` matrix coloured by Jaccard index (shared ÷ union), each cell
    annotated with the Jaccard index and the shared-entry count (diagonal: each ticket's nnz).
    Right: per layer, one bar per pair of tickets with the Jaccard index of their entries in
    that layer.

    Args:
        report: from :func:`lotavec.merge.compare.ticket_overlap`.
        path: PNG file to write (replaced atomically).
        title: title (default: the number of tickets and shared entries).
        size: figure size in inches; default grows with the tickets and layers.
        dpi: pixels per inch; the PNG is ``round(size × dpi)`` pixels.

    Returns:
        ``path``.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    Figure, Canvas = _mpl()
    n = len(report.tickets)
    names = _labels(report.tickets)
    layers = list(report.layers)
    if size is None:
        size = (min(4.5 + 0.9 * n + 0.45 * max(len(layers), 1) * max(1, math.ceil(len(report.pairs) / 3)), 36.0),
                min(4.0 + 0.35 * n, 14.0))
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax_m, ax_l = fig.subplots(1, 2, width_ratios=[1.0, 1.6])
    jac = np.full((n, n), np.nan)
    shared = np.diag(np.asarray(report.nnz, np.int64)) if n else np.zeros((0, 0), np.int64)
    for p in report.pairs:
        jac[p.a, p.b] = jac[p.b, p.a] = p.jaccard
        shared[p.a, p.b] = shared[p.b, p.a] = p.intersection
    # The diagonal (a ticket with itself, always 1) is left blank so the colours resolve the pairs.
    top = float(np.nanmax(jac)) if report.pairs else 0.0
    vmax = top if top > 0 else 1.0
    im = ax_m.imshow(np.ma.masked_invalid(jac), cmap="magma_r", vmin=0.0, vmax=vmax, interpolation="nearest")
    ax_m.set_facecolor("#e8e8e8")
    ax_m.set_xticks(range(n), labels=names, rotation=45, ha="right", fontsize=8)
    ax_m.set_yticks(range(n), labels=names, fontsize=8)
    if n * n <= MAX_ANNOTATED:
        for i in range(n):
            for j in range(n):
                if i == j:
                    txt, dark = f"{_human(shared[i, i])} nnz", False
                else:
                    txt, dark = f"{jac[i, j]:.3f}\n{_human(shared[i, j])} shared", jac[i, j] > vmax / 2
                ax_m.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax_m.set_title("Jaccard (shared ÷ union)", fontsize=10)
    fig.colorbar(im, ax=ax_m, shrink=0.8)
    _layer_bars(ax_l, report, names, layers)
    total = sum(p.intersection for p in report.pairs)
    head = title or (f"{n} tickets: " + ("disjoint" if report.disjoint else f"{_human(total)} shared entries (all pairs)"))
    fig.suptitle(head, fontsize=11)
    return _save(fig, Canvas, path, dpi)


def _layer_bars(ax: Any, report: OverlapReport, names: list[str], layers: list[str]) -> None:
    """Grouped bars: Jaccard index per layer, one bar per pair."""
    pairs = report.pairs
    ax.set_title("per-layer overlap (Jaccard)", fontsize=10)
    ax.set_xlabel("layer")
    if not pairs or not layers:
        ax.text(0.5, 0.5, "no pairs to compare" if not pairs else "no tensors",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    x = np.arange(len(layers))
    width = 0.8 / len(pairs)
    top = 0.0
    for k, p in enumerate(pairs):
        vals = [next((q.jaccard for q in report.layers[layer] if (q.a, q.b) == (p.a, p.b)), 0.0) for layer in layers]
        top = max(top, max(vals))
        ax.bar(x - 0.4 + width * (k + 0.5), vals, width, label=f"{names[p.a]} & {names[p.b]}")
    ax.set_xticks(x, labels=layers, fontsize=8, rotation=90 if len(layers) > 40 else 0)
    ax.set_ylabel("Jaccard")
    ax.set_ylim(0, max(top * 1.15, 1e-3))
    if len(pairs) <= 12:
        ax.legend(fontsize=7, loc="upper right")
