"""Buffer adapters: the address, size and keep-alive of the bytes-like objects, NumPy arrays and
torch tensors the calls take."""
from __future__ import annotations

import ctypes
from typing import Any, Tuple

from . import _lib
from .errors import InvalidArgument


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _readable(data: Any) -> Tuple[int, int, Any]:
    """(address, bytes, keep-alive) of a readable contiguous buffer."""
    if _is_torch(data):
        if data.is_cuda:
            raise InvalidArgument("writes take host memory; copy the tensor to the CPU first")
        if not data.is_contiguous():
            raise InvalidArgument("the tensor is not contiguous")
        return data.data_ptr(), data.numel() * data.element_size(), data
    mv = memoryview(data)
    if not mv.c_contiguous:
        raise InvalidArgument("the buffer is not C-contiguous")
    nbytes = mv.nbytes
    if nbytes == 0:
        return 0, 0, mv
    if mv.readonly:
        buf = (ctypes.c_char * nbytes).from_buffer_copy(mv.cast("B"))
        return ctypes.addressof(buf), nbytes, buf
    buf = (ctypes.c_char * nbytes).from_buffer(mv.cast("B"))
    return ctypes.addressof(buf), nbytes, (buf, mv)


def _writable(out: Any) -> Tuple[int, int, Any]:
    """(address, bytes, keep-alive) of a writable contiguous host buffer."""
    if _is_torch(out):
        if not out.is_contiguous():
            raise InvalidArgument("the output tensor is not contiguous")
        return out.data_ptr(), out.numel() * out.element_size(), out
    mv = memoryview(out)
    if mv.readonly:
        raise InvalidArgument("the output buffer is read-only")
    if not mv.c_contiguous:
        raise InvalidArgument("the output buffer is not C-contiguous")
    if mv.nbytes == 0:
        return 0, 0, mv
    buf = (ctypes.c_char * mv.nbytes).from_buffer(mv.cast("B"))
    return ctypes.addressof(buf), mv.nbytes, (buf, mv)


def _indices(indices: Any):
    """Contiguous int32 host indices: (pointer, count, keep-alive)."""
    if _is_torch(indices):
        import torch
        t = indices.detach()
        if t.is_cuda:
            t = t.cpu()
        t = t.to(torch.int32).contiguous()
        return ctypes.cast(t.data_ptr(), _lib.c_int32_p), t.numel(), t
    try:
        import numpy as np
        a = np.ascontiguousarray(indices, dtype=np.int32).reshape(-1)
        return a.ctypes.data_as(_lib.c_int32_p), a.size, a
    except ImportError:
        values = list(indices)
        arr = (ctypes.c_int32 * len(values))(*values)
        return ctypes.cast(arr, _lib.c_int32_p), len(values), arr
