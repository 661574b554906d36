"""LoTA training: exact sparse training, data loading, loops, the pipeline and the HF Trainer hook.

``lotavec.train(base, data, out, config=...)`` calls :func:`lotavec.train.pipeline.train`.
"""

import sys as _sys
import types as _types


def __getattr__(name: str):
    if name in ("TrainConfig", "TrainOutput"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'lotavec.train' has no attribute {name!r}")


class _CallableModule(_types.ModuleType):
    """Lets ``lotavec.train(...)`` run the pipeline while ``lotavec.train`` stays the package."""

    def __call__(self, *args, **kwargs):
        from .pipeline import train

        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
