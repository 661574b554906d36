"""Plots: the density grid's values, PNGs written at the asked size, overlap plots, the CLI
``overlap --plot`` path, no global matplotlib state changed, and the missing-matplotlib message."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from lotavec.errors import MissingDependencyError
from lotavec.extraction import extract
from lotavec.merge.compare import ticket_overlap
from lotavec.plots import MODULE_ORDER, density_grid, plot_density, plot_overlap
from lotavec.ticket import Ticket, TicketTensor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = open(path, "rb").read(32)
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def tickets(tmp_path_factory, tiny_pair):
    """Three tiny llama tickets (densities 0.05, 0.02 and 0.05 of another fine-tune)."""
    from lotavec.testing import make_finetuned

    base, ft = tiny_pair
    root = tmp_path_factory.mktemp("plot_tickets")
    make_finetuned(base, root / "ft2", density=0.1, seed=7)
    a = extract(base, ft, root / "a.lotavec.safetensors", density=0.05).ticket
    b = extract(base, ft, root / "b.lotavec.safetensors", density=0.02).ticket
    c = extract(base, root / "ft2", root / "c.lotavec.safetensors", density=0.05).ticket
    return base, [a, b, c]


def raw_tensor(name, shape, nnz):
    numel = int(np.prod(shape))
    idx = np.linspace(0, numel - 1, nnz).astype(np.int64) if nnz else np.empty(0, np.int64)
    return TicketTensor(name, tuple(shape), "BF16", idx, "raw", np.full(nnz, 0x3F80, np.uint16))


def test_density_grid_matches_tensor_info(tickets):
    _, (a, _, _) = tickets
    g = density_grid(a)
    assert g.rows == ("0", "1")
    assert g.cols == MODULE_ORDER[:7]  # q k v o gate up down, in that order
    for name in a.names:
        info = a.info(name)
        layer = name.split(".")[2]
        col = name.split(".")[-2]
        i, j = g.rows.index(layer), g.cols.index(col)
        assert g.nnz[i, j] == info["nnz"] and g.numel[i, j] == info["numel"]
    assert g.nnz.sum() == a.nnz
    assert g.density[0, 0] == pytest.approx(g.nnz[0, 0] / g.numel[0, 0])


def test_density_grid_gpt2_neox_names_and_other_row():
    t = Ticket([
        raw_tensor("transformer.h.0.attn.c_attn.weight", (64, 192), 100),
        raw_tensor("transformer.h.0.attn.c_proj.weight", (64, 64), 40),
        raw_tensor("transformer.h.0.mlp.c_proj.weight", (256, 64), 10),
        raw_tensor("transformer.h.3.mlp.c_fc.weight", (64, 256), 64),
        raw_tensor("transformer.h.3.mlp.c_fc.bias", (256,), 8),
        raw_tensor("transformer.wte.weight", (260, 64), 5),
    ])
    g = density_grid(t)
    assert g.rows == ("0", "3", "other")
    # GPT-2 has c_proj under both attn and mlp: those two columns keep their parent.
    assert set(g.cols) == {"c_attn", "attn.c_proj", "mlp.c_proj", "c_fc", "c_fc.bias", "wte"}
    assert g.cols.index("c_attn") < g.cols.index("attn.c_proj") < g.cols.index("c_fc") < g.cols.index("mlp.c_proj")
    assert g.nnz[g.rows.index("0"), g.cols.index("mlp.c_proj")] == 10
    assert g.nnz[g.rows.index("other"), g.cols.index("wte")] == 5
    assert g.numel[g.rows.index("3"), g.cols.index("c_attn")] == 0  # untouched cell
    assert np.isnan(g.density[g.rows.index("3"), g.cols.index("c_attn")])
    neox = density_grid(Ticket([raw_tensor("gpt_neox.layers.12.mlp.dense_h_to_4h.weight", (8, 8), 3)]))
    assert neox.rows == ("12",) and neox.cols == ("dense_h_to_4h",)


def test_plot_density_png_size_and_content(tickets, tmp_path):
    import matplotlib
    from matplotlib.image import imread

    _, (a, _, _) = tickets
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    pyplot = sys.modules.get("matplotlib.pyplot")
    out = tmp_path / "density.png"
    assert plot_density(a, out, size=(6.0, 3.0), dpi=50) == str(out)
    assert png_size(out) == (300, 150)
    pixels = imread(out)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # a heatmap, not a blank page
    # default size grows with the grid: more layers, taller figure
    deep = Ticket([raw_tensor(f"model.layers.{i}.self_attn.q_proj.weight", (8, 8), 3) for i in range(40)])
    plot_density(deep, tmp_path / "deep.png", dpi=40)
    plot_density(Ticket([raw_tensor("model.layers.0.self_attn.q_proj.weight", (8, 8), 3)]), tmp_path / "one.png", dpi=40)
    assert png_size(tmp_path / "deep.png")[1] > png_size(tmp_path / "one.png")[1]
    # no global state touched: rcParams, backend, pyplot
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend
    assert sys.modules.get("matplotlib.pyplot") is pyplot
    assert not list(tmp_path.glob(".lotavec-plot-*"))  # no temporary files left


def test_plot_overlap_png(tickets, tmp_path):
    base, tks = tickets
    rep, signs = ticket_overlap(tks, base=base)
    assert signs and len(rep.pairs) == 3
    out = plot_overlap(rep, tmp_path / "overlap.png", size=(10.0, 4.0), dpi=60)
    assert png_size(out) == (600, 240)
    w, h = png_size(plot_overlap(rep, tmp_path / "default.png"))
    assert w > 400 and h > 300
    single, _ = ticket_overlap(tks[:1])  # one ticket: no pairs, still a valid picture
    assert png_size(plot_overlap(single, tmp_path / "single.png", size=(5, 3), dpi=40)) == (200, 120)


def test_cli_overlap_plot(tickets, tmp_path):
    from lotavec_cli.cmd_merge import overlap

    _, tks = tickets
    out = tmp_path / "cli.png"
    res = CliRunner().invoke(overlap, [tks[0].path, tks[2].path, "--plot", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["pairs"][0]["intersection"] > 0
    assert out.stat().st_size > 1000 and png_size(out)[0] > 0


def test_missing_matplotlib_message(tickets, tmp_path, monkeypatch):
    _, (a, _, _) = tickets
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'lotavec\[plot\]'") as e:
        plot_density(a, tmp_path / "x.png")
    assert isinstance(e.value, ImportError)
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        plot_overlap(ticket_overlap([a])[0], tmp_path / "y.png")
    assert not list(tmp_path.iterdir())
