"""Fixtures for the extraction tests (helpers are in extract_helpers.py).

* ``arch_pairs`` — ``{arch: (base_dir, finetuned_dir)}`` where the fine-tune perturbs *every*
  stored tensor (so extraction, not the fine-tune, decides what is selected).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def arch_pairs(tmp_path_factory, tiny_model_dirs):
    """``{arch: (base_dir, finetuned_dir)}``; the fine-tune changes ~20 % of every stored tensor."""
    from lotavec.models import open_model
    from lotavec.testing import make_finetuned

    root = tmp_path_factory.mktemp("arch_pairs")
    out = {}
    for arch, base in tiny_model_dirs.items():
        with open_model(base) as src:
            every = src.names()
        make_finetuned(base, root / arch, density=0.2, seed=3, tensors=every)
        out[arch] = (base, root / arch)
    return out
