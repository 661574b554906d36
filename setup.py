"""Build script for lotavec's optional compiled kernels; everything else is in pyproject.toml.

The kernels (``lotavec/_csrc/*.c``, plain C loaded with ctypes by :mod:`lotavec.native`) speed up
the hot loops of decoding, merging and selection. They are optional: without a C compiler the
build warns and lotavec runs on its numpy code paths, with identical results.
"""

from setuptools import Extension, setup

_FLAGS = ["-O3", "-std=c99", "-fno-strict-aliasing"]

setup(
    ext_modules=[
        Extension(f"lotavec._c{name}", [f"lotavec/_csrc/{name}.c"], extra_compile_args=_FLAGS, optional=True)
        for name in ("codec", "select")
    ],
)
