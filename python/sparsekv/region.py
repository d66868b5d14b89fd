"""Region: an open handle on one region (layers x tokens x entry)."""
from __future__ import annotations

import ctypes

from typing import TYPE_CHECKING, Any

from . import _lib
from ._handles import _Closable
from .buffers import _indices, _is_torch, _readable, _writable
from .errors import _check

if TYPE_CHECKING:
    from .client import Client


class Region(_Closable):
    """An open handle on one region (layers x tokens x entry). See the module docstring."""

    def __init__(self, client: Client, handle: ctypes.c_void_p):
        self._client = client
        self._handle = handle
        lib = _lib.core()
        self.key: str = lib.skv_region_key(handle).decode()
        info = self._info()
        self.layers: int = info.layers
        self.entry_bytes: int = info.entry_bytes
        self.entry_stride_bytes: int = info.entry_stride_bytes
        self.tokens_per_page: int = info.tokens_per_page

    def _info(self) -> _lib.RegionInfo:
        info = _lib.RegionInfo()
        info.struct_size = ctypes.sizeof(_lib.RegionInfo)
        _check(_lib.core().skv_region_info_get(self._handle, ctypes.byref(info)))
        return info

    def close(self) -> None:
        """Releases the lease (and the write lease, if this handle holds it)."""
        if getattr(self, "_handle", None):
            for path in list(self._client._device_paths.values()):
                path.forget(self)
            _lib.core().skv_region_free(self._handle)
            self._handle = None

    def __repr__(self) -> str:
        return (f"<sparsekv.Region {self.key!r} {self.layers}x{self.committed_tokens}/{self.capacity_tokens} tokens "
                f"x {self.entry_bytes} B{' sealed' if self.sealed else ''}{' writable' if self.writable else ''}>")

    @property
    def capacity_tokens(self) -> int:
        return self._info().capacity_tokens

    @property
    def committed_tokens(self) -> int:
        """Tokens readers see, as last learned from the daemon."""
        return self._info().committed_tokens

    @property
    def sealed(self) -> bool:
        return bool(self._info().sealed)

    @property
    def writable(self) -> bool:
        """Whether this handle holds the region's write lease."""
        return bool(self._info().writable)

    @property
    def transport(self) -> str:
        return _lib.core().skv_region_transport(self._handle).decode()

    def lease_ok(self) -> bool:
        return _lib.core().skv_lease_status(self._handle) == 0

    def write(self, layer: int, first_token: int, data: Any) -> None:
        """Writes whole entries to tokens [first_token, first_token + n) of ``layer``."""
        ptr, nbytes, keep = _readable(data)
        _check(_lib.core().skv_write(self._handle, layer, first_token, ptr, nbytes))
        del keep

    def append(self, data: Any, tokens: int) -> None:
        """Appends ``tokens`` tokens to every layer (data laid out [layer][token][entry]) and commits."""
        ptr, nbytes, keep = _readable(data)
        _check(_lib.core().skv_append(self._handle, ptr, nbytes, tokens))
        del keep

    def reserve(self, capacity_tokens: int) -> None:
        _check(_lib.core().skv_reserve(self._handle, capacity_tokens))

    def commit(self, committed_tokens: int) -> None:
        """Makes tokens [0, committed_tokens) visible to readers (only grows)."""
        _check(_lib.core().skv_commit(self._handle, committed_tokens))

    def seal(self) -> None:
        """Seals at the committed length (FailedPrecondition if this handle wrote past it)."""
        _check(_lib.core().skv_seal(self._handle))

    def refresh(self) -> None:
        """Re-reads page tables and committed length (a fresh lease)."""
        _check(_lib.core().skv_refresh(self._handle))

    def verify(self) -> None:
        """Re-reads every committed entry against the seal checksum (DataLoss if changed)."""
        _check(_lib.core().skv_verify(self._handle))

    def release_write(self) -> None:
        """Gives the write lease back; the handle stays open, read-only."""
        _check(_lib.core().skv_release_write(self._handle))

    def fetch(self, layer: int, indices: Any, out: Any = None, *, stream: Any = None, check: bool = True):
        """Fetches the entries of ``layer`` at ``indices`` densely (entry i at row i).

        ``out``: None (a new NumPy ``uint8 [k, entry_bytes]`` is returned), a NumPy array, a
        writable buffer, a CPU torch tensor, or a CUDA torch tensor: then the GPU path gathers
        straight from the pool on ``stream`` (default ``torch.cuda.current_stream()``), indices
        may be a CUDA tensor, -1 entries are padding (zero-filled), and with ``check`` the call
        waits for the stream and raises OutOfRange for an index past the committed length.
        Returns ``out``.
        """
        if out is not None and _is_torch(out) and out.is_cuda:
            return self._client._device_path(self, out.device.index or 0).fetch(self, layer, indices, out, stream, check)
        ip, n, keep = _indices(indices)
        if out is None:
            import numpy as np
            out = np.empty((n, self.entry_bytes), dtype=np.uint8)
        op, nbytes, keep2 = _writable(out)
        _check(_lib.core().skv_fetch(self._handle, layer, ip, n, op, nbytes))
        del keep, keep2
        return out
