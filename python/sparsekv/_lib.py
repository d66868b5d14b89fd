"""ctypes bindings of the sparsekv C ABI (sparsekv/sparsekv_c.h).

The package talks to libsparsekv through its stable C ABI with ctypes, not through a compiled
Python extension: the same files import on any CPython 3 (Debian's 3.11, the GPU machine's 3.12)
without a rebuild, and ctypes releases the GIL around every foreign call, so fetches and every
other call that waits or copies let other Python threads run.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

c_int32_p = ctypes.POINTER(ctypes.c_int32)


class Options(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("server", ctypes.c_char_p),
        ("transport", ctypes.c_char_p),
        ("token", ctypes.c_char_p),
        ("tls_ca_file", ctypes.c_char_p),
        ("tls_cert_file", ctypes.c_char_p),
        ("tls_key_file", ctypes.c_char_p),
        ("rpc_timeout_ms", ctypes.c_int64),
        ("fetch_threads", ctypes.c_int32),
        ("data_connections", ctypes.c_int32),
        ("cluster", ctypes.c_char_p),
    ]


class RegionInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("layers", ctypes.c_int32),
        ("entry_bytes", ctypes.c_int32),
        ("entry_stride_bytes", ctypes.c_int32),
        ("tokens_per_page", ctypes.c_int32),
        ("capacity_tokens", ctypes.c_int64),
        ("committed_tokens", ctypes.c_int64),
        ("sealed", ctypes.c_int32),
        ("writable", ctypes.c_int32),
    ]


class FetchItem(ctypes.Structure):
    _fields_ = [
        ("region", ctypes.c_void_p),
        ("layer", ctypes.c_int32),
        ("indices", c_int32_p),
        ("count", ctypes.c_size_t),
        ("dst", ctypes.c_void_p),
        ("dst_bytes", ctypes.c_size_t),
    ]


def _find(env: str, names: list[str]) -> str:
    explicit = os.environ.get(env)
    if explicit:
        return explicit
    here = os.path.dirname(os.path.abspath(__file__))
    for name in names:
        beside = os.path.join(here, name)
        if os.path.exists(beside):
            return beside
    for name in names:
        found = ctypes.util.find_library(name.replace("lib", "", 1).split(".so")[0])
        if found:
            return found
    return names[-1]  # let the dynamic loader search (LD_LIBRARY_PATH, ld.so.cache)


def _declare(lib: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_core: Optional[ctypes.CDLL] = None
_cuda: Optional[ctypes.CDLL] = None


def core() -> ctypes.CDLL:
    """libsparsekv, loaded on first use ($SPARSEKV_LIBRARY overrides where from)."""
    global _core
    if _core is not None:
        return _core
    path = _find("SPARSEKV_LIBRARY", ["libsparsekv.so", "libsparsekv.so.0"])
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(f"sparsekv: cannot load the client library {path!r}: {e}; set SPARSEKV_LIBRARY "
                          "to the path of libsparsekv.so") from None
    vp, cp, i32, i64, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t
    pvp = ctypes.POINTER(ctypes.c_void_p)
    pcp = ctypes.POINTER(ctypes.c_void_p)
    _declare(lib, "skv_last_error", cp)
    _declare(lib, "skv_version", cp)
    _declare(lib, "skv_free_string", None, vp)
    _declare(lib, "skv_connect", ctypes.c_int, ctypes.POINTER(Options), pvp)
    _declare(lib, "skv_client_free", None, vp)
    _declare(lib, "skv_create", ctypes.c_int, vp, cp, i32, i32, i64, i64, pvp)
    _declare(lib, "skv_create_replicated", ctypes.c_int, vp, cp, i32, i32, i64, i64, i32, pvp)
    _declare(lib, "skv_open", ctypes.c_int, vp, cp, ctypes.c_int, pvp)
    _declare(lib, "skv_delete", ctypes.c_int, vp, cp)
    _declare(lib, "skv_list", ctypes.c_int, vp, cp, pcp)
    _declare(lib, "skv_stats", ctypes.c_int, vp, pcp)
    _declare(lib, "skv_transport_choices", ctypes.c_int, vp, pcp)
    _declare(lib, "skv_fetch_batch", ctypes.c_int, vp, ctypes.POINTER(FetchItem), sz)
    _declare(lib, "skv_region_free", None, vp)
    _declare(lib, "skv_region_info_get", ctypes.c_int, vp, ctypes.POINTER(RegionInfo))
    _declare(lib, "skv_region_key", cp, vp)
    _declare(lib, "skv_region_transport", cp, vp)
    _declare(lib, "skv_write", ctypes.c_int, vp, i32, i64, vp, sz)
    _declare(lib, "skv_append", ctypes.c_int, vp, vp, sz, i64)
    for name in ("skv_reserve", "skv_commit"):
        _declare(lib, name, ctypes.c_int, vp, i64)
    for name in ("skv_seal", "skv_refresh", "skv_verify", "skv_release_write", "skv_lease_status"):
        _declare(lib, name, ctypes.c_int, vp)
    _declare(lib, "skv_fetch", ctypes.c_int, vp, i32, c_int32_p, sz, vp, sz)
    _core = lib
    return lib


def cuda() -> ctypes.CDLL:
    """libsparsekv-cuda (the GPU path), loaded on first use ($SPARSEKV_CUDA_LIBRARY)."""
    global _cuda
    if _cuda is not None:
        return _cuda
    core()
    path = _find("SPARSEKV_CUDA_LIBRARY", ["libsparsekv-cuda.so", "libsparsekv-cuda.so.0"])
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise RuntimeError(f"sparsekv: the GPU path needs {path!r}, which cannot be loaded: {e}; it is built where "
                           "the CUDA toolkit is found (set SPARSEKV_CUDA_LIBRARY to its path)") from None
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    pvp = ctypes.POINTER(ctypes.c_void_p)
    _declare(lib, "skv_cuda_batch_create", ctypes.c_int, vp, ctypes.c_int, i32, i32, i32, i64, pvp)
    _declare(lib, "skv_cuda_batch_free", None, vp)
    _declare(lib, "skv_cuda_bind", ctypes.c_int, vp, i32, vp, vp)
    _declare(lib, "skv_cuda_release", ctypes.c_int, vp, i32)
    _declare(lib, "skv_cuda_sync", ctypes.c_int, vp, vp)
    _declare(lib, "skv_cuda_gather", ctypes.c_int, vp, vp, i32, vp, i32, i32, vp, vp, vp)
    _declare(lib, "skv_cuda_end_step", ctypes.c_int, vp, vp)
    _declare(lib, "skv_cuda_check_errors", ctypes.c_int, vp, vp)
    _declare(lib, "skv_cuda_cache_create", ctypes.c_int, vp, i32, i32, i32, pvp)
    _declare(lib, "skv_cuda_cache_free", None, vp)
    _declare(lib, "skv_cuda_cache_lookup", ctypes.c_int, vp, vp, i32, vp, i32, i32, vp, vp)
    _declare(lib, "skv_cuda_cache_hot_buffer", vp, vp, i32, i32)
    _declare(lib, "skv_cuda_cache_release_slot", ctypes.c_int, vp, vp, i32)
    u64p = ctypes.POINTER(ctypes.c_uint64)
    _declare(lib, "skv_cuda_cache_counters", ctypes.c_int, vp, vp, u64p, u64p, i32, ctypes.c_int)
    _cuda = lib
    return lib


def last_error() -> str:
    return core().skv_last_error().decode("utf-8", "replace")


def take_string(ptr: ctypes.c_void_p) -> str:
    lib = core()
    try:
        return ctypes.cast(ptr, ctypes.c_char_p).value.decode("utf-8")
    finally:
        lib.skv_free_string(ptr)
