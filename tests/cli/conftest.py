"""Fixtures for the CLI tests: an isolated runner (temporary home, cache and working directory,
offline Hub) and a small kit of tickets made from the session's tiny models."""

from __future__ import annotations

import contextlib

import pytest
from click.testing import CliRunner


class Runner:
    """Invoke ``lotavec`` commands in an isolated working directory with an offline Hub."""

    def __init__(self, root):
        self.root = root
        (root / "home").mkdir(exist_ok=True)
        (root / "work").mkdir(exist_ok=True)
        self.env = {"HF_HUB_OFFLINE": "1", "HOME": str(root / "home"), "HF_HOME": str(root / "home" / "hf"),
                    "XDG_CACHE_HOME": str(root / "home" / "cache")}
        self.cli = CliRunner(env=self.env)

    def __call__(self, *args):
        from lotavec_cli.main import cli

        with contextlib.chdir(self.root / "work"):
            return self.cli.invoke(cli, [str(a) for a in args])


@pytest.fixture
def lotavec_cli(tmp_path):
    """``lotavec_cli("extract", ...)`` -> click Result, run in a fresh temporary directory."""
    return Runner(tmp_path)


@pytest.fixture(scope="session")
def cli_kit(tmp_path_factory, tiny_pair):
    """``{"base", "ft1", "ft2", "A", "B", "C"}``: A from ft1, B from ft2 disjoint from A, C from ft2."""
    import lotavec
    from lotavec.testing import make_finetuned

    root = tmp_path_factory.mktemp("cli_kit")
    base, ft1 = tiny_pair
    ft2 = make_finetuned(base, root / "ft2", density=0.1, seed=2)
    lotavec.extract(base, ft1, root / "a.lota", density=0.05, full_digest=True)  # verify --base checks it
    lotavec.extract(base, ft2, root / "b.lota", density=0.05, disjoint_from=[root / "a.lota"])
    lotavec.extract(base, ft2, root / "c.lota", density=0.05)
    return {"base": base, "ft1": ft1, "ft2": ft2, "A": root / "a.lota", "B": root / "b.lota", "C": root / "c.lota",
            "root": root}
