"""Merging tickets: methods (registry), the streaming engine, in-memory apply/unapply, overlap."""

from .config import MergeConfig, MergeParams, load_merge_config, merge_config_from_args
from .engine import MergeResult, check_base_identity, merge
from .methods import SparseDelta, merge_tensor
from .registry import METHODS, get_method

__all__ = [
    "METHODS",
    "MergeConfig",
    "MergeParams",
    "MergeResult",
    "SparseDelta",
    "check_base_identity",
    "get_method",
    "load_merge_config",
    "merge",
    "merge_config_from_args",
    "merge_tensor",
]


class _CallableModule(type(__import__("sys"))):
    """Lets ``lotavec.merge(...)`` call :func:`~lotavec.merge.engine.merge` while ``lotavec.merge``
    stays the package (``lotavec.merge.MergeParams`` ...)."""

    def __call__(self, *args, **kwargs):
        return merge(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
