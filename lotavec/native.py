"""Optional compiled kernels, loaded with :mod:`ctypes`.

``lotavec/_csrc/<name>.c`` is built into the extension file ``lotavec/_c<name>`` at install time
(see ``setup.py``; optional — a failed build only warns). :func:`kernels` returns the loaded
library, or ``None`` when it is not built or ``LOTAVEC_NATIVE=0`` is set; every caller has a numpy
path that gives identical results, and the test suite runs both.

ctypes releases the GIL during a foreign call, so kernels run in parallel on worker threads.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading

_lock = threading.Lock()
_cache: dict[str, ctypes.CDLL | None] = {}

#: Environment variable: ``0`` disables the compiled kernels (numpy paths only).
ENV = "LOTAVEC_NATIVE"

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_U32 = ctypes.c_uint32

#: Calling-convention version per library (its ``lv_abi()``); a build from older sources whose
#: functions take other arguments is not used.
ABI: dict[str, int] = {"codec": 10}

#: Entries per output window of the merge kernels that write their result with ``pwrite``
#: (``LV_WINDOW`` in lotavec/_csrc/codec.c): their scratch output holds this many entries.
WINDOW = 262144

#: Signatures per library: ``{function: (restype, [argtypes])}``.
SIGNATURES: dict[str, dict[str, tuple]] = {
    "codec": {
        "lv_gaps_decode": (_I64, [_P, _I32, _I64, _I64, _P]),
        "lv_bitmap_decode": (_I64, [_P, _I64, _I64, _P, _I64]),
        "lv_unshuffle": (None, [_P, _I32, _I64, _I32, _P]),
        "lv_gaps_max": (_I64, [_P, _I64, _I64, _I64]),
        "lv_gaps_pack": (None, [_P, _I64, _I64, _I32, _P]),
        "lv_shuffle": (None, [_P, _I32, _I64, _I32, _P]),
        "lv_first_unsorted": (_I64, [_P, _I64]),
        "lv_apply": (_I64, [_P, _P, _P, _I64, _I32, _I32]),
        "lv_topk_abs": (_I64, [_P, _I64, _I64, _P, _P, _P, _P, _P]),
        "lv_delta": (_I64, [_P, _P, _P, _I64, _I32, _I32, _P]),
        "lv_gather": (None, [_P, _I32, _P, _I64, _P]),
        "lv_delta_hist_g": (_I64, [_P, _I64, _P, _P, _P, _P, _P, _I32, _I32, _P, _P]),
        "lv_topk_g": (_I64, [_P, _I64, _I64, _P, _I64, _P, _P, _P, _P, _P, _P, _I32]),
        "lv_consensus": (_I64, [_P, _P, _I64, _I32, _I32, _P, _P, _P, _P, _I32, _I32, _I32, ctypes.c_float, _I32,
                                _P, _P, _P, _P, _P, _I32, _I64, _P]),
        "lv_consensus2": (_I64, [_P, _P, _I64, _I32, _P, _P, _I64, _P, _P, _I64, ctypes.c_float, ctypes.c_float,
                                 _I32, _I32, _I32, ctypes.c_float, _I32, _P, _P, _P, _I32, _I64, _P, _I32]),
        "lv_sum2": (_I64, [_P, _P, _I64, _I32, _I32, _P, _P, _I64, _I32, _P, _P, _I64, _I32, _P, _P, _I32, _I64, _P]),
        "lv_sum2g": (_I64, [_P, _P, _I64, _I32, _I32, _I64, _P, _P, _P, _P, _P, _I32, _I64, _P, _P, _P, _P, _P, _I32,
                            _P, _P, _I32, _I64, _P]),
        "lv_sum": (_I64, [_P, _P, _I64, _I32, _I32, _I32, _I32, _P, _P, _P, _P, _P, _P, _P, _P, _P]),
        "lv_ctx_new": (_P, []),
        "lv_ctx_free": (None, [_P]),
        "lv_sum_coded": (_I64, [_P, _P, _I64, _I32, _I32, _I32, _P, _P, _I64, _I64, _I32, _P, _P, _I64, _I64, _I32,
                                _P, _I32, _I64, _P]),
        "lv_ctx_decode": (_I64, [_P, _P, _P, _I64, _I64, _I32, _I32, _I32, _P]),
        "lv_gaps_indices": (None, [_I64, _P, _P, _P, _P, _P]),
        "lv_populate": (_I32, [_P, _I64]),
        "lv_run_jobs": (_I32, [_P, _I64, _I32, _I64, _P]),
        "lv_release": (_I32, [_P, _I64]),
        "lv_dctx_new": (_P, []),
        "lv_dctx_free": (None, [_P]),
        "lv_zstd_frame": (_I64, [_P, _P, _I64, _P, _I64]),
        "lv_zstd_error": (ctypes.c_char_p, [_I64]),
        "lv_abi": (_I32, []),
        "lv_crc32": (_U32, [_P, _I64, _U32, _I32]),
        "lv_mutex_new": (_P, []),
        "lv_mutex_free": (None, [_P]),
        "lv_mutex_lock": (None, [_P]),
        "lv_mutex_unlock": (None, [_P]),
    },
    "select": {
        "lv_sel_scan": (_I64, [_P, _P, _I64, _I32, _P, _I64, _I32, _U32, _P, _P]),
        "lv_sel_emit": (_I64, [_P, _P, _I64, _I32, _P, _I64, _U32, _I64, _P, _I32, _P]),
    },
}


def enabled() -> bool:
    """Whether compiled kernels may be used (``LOTAVEC_NATIVE`` is not ``0``)."""
    return os.environ.get(ENV, "1") != "0"


def kernels(name: str) -> ctypes.CDLL | None:
    """The compiled library ``lotavec._c<name>``, or ``None`` (not built, or disabled)."""
    if not enabled():
        return None
    with _lock:
        if name not in _cache:
            _cache[name] = _load(name)
        return _cache[name]


def _load(name: str) -> ctypes.CDLL | None:
    try:
        spec = importlib.util.find_spec(f"lotavec._c{name}")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    for fn, (res, args) in SIGNATURES.get(name, {}).items():
        try:
            f = getattr(lib, fn)
        except AttributeError:  # a stale build from an older source: do not use it
            return None
        f.restype = res
        f.argtypes = args
    if name in ABI and lib.lv_abi() != ABI[name]:
        return None
    return lib


def zstd_in_c() -> bool:
    """Whether the compiled ``codec`` kernels can decode zstd frames themselves (they load the
    system's ``libzstd.so.1``): the merge then decodes tickets without Python."""
    lib = kernels("codec")
    d = lib.lv_dctx_new() if lib is not None else None
    if d:
        lib.lv_dctx_free(d)
    return bool(d)


def ptr(a) -> int:
    """Address of a numpy array's first element (the array must stay alive during the call)."""
    return a.ctypes.data


class Mutex:
    """A mutex that Python code (``with mutex:``) and compiled kernels (:attr:`ptr`) share, from
    the ``codec`` library; waiting threads sleep (ctypes releases the GIL while one waits).

    Raises:
        RuntimeError: the ``codec`` kernels are not available (check :func:`kernels` first).
    """

    def __init__(self):
        lib = kernels("codec")
        if lib is None:
            raise RuntimeError("the compiled codec kernels are not available")
        self._lib = lib
        self.ptr = lib.lv_mutex_new()

    def __enter__(self) -> Mutex:
        self._lib.lv_mutex_lock(self.ptr)
        return self

    def __exit__(self, *exc) -> None:
        self._lib.lv_mutex_unlock(self.ptr)

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self._lib.lv_mutex_free(self.ptr)
            self.ptr = None
