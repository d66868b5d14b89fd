"""sparsekv: a disaggregated latent-cache (KV-cache) memory server for sparse-attention LLMs.

A memory-pool daemon, ``sparsekvd``, holds cache-line-granular regions (one sequence's cache:
layers x tokens x entry) in a shared pool; this package is its client. Prefill writes a region,
decode appends to it, and every decode step fetches just the top-k entries the indexer chose::

    import numpy as np, sparsekv

    client = sparsekv.Client(server="127.0.0.1:7370")
    region = client.create("req-42", layers=61, entry_bytes=656, capacity_tokens=4096)
    region.write(layer=0, first_token=0, data=entries)     # bytes-like, NumPy or torch
    region.commit(4096)
    region.release_write()                                # prefill hands the region over

    decoder = client.open_for_write("req-42")             # the decode server takes the write lease
    decoder.append(one_token_all_layers, tokens=1)        # grows by whole pages, commits
    reader = client.open("req-42")                        # read-only handle
    out = reader.fetch(layer, topk_indices)               # NumPy uint8 [k, entry_bytes]
    reader.fetch(layer, topk_indices, out=cuda_tensor)    # straight into GPU memory

Errors are exceptions, one class per status code (:class:`NotFound`, :class:`OutOfRange`, ...),
all subclasses of :class:`SparsekvError`, carrying the daemon's message. Every call that waits or
copies releases the GIL. ``out`` may be a NumPy array, any writable buffer, a CPU torch tensor or
a CUDA torch tensor (then the GPU path fills it on ``torch.cuda.current_stream()``, and the
indices may be a CUDA tensor too). See the README for the server, transports and guarantees.
"""
from __future__ import annotations

import ctypes
import json
import threading
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from . import _lib

__all__ = [
    "Client", "Region", "SparsekvError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated", "version",
]


class SparsekvError(Exception):
    """A failed sparsekv call: ``code`` is the status code number, ``message`` the daemon's words."""

    code = 2

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Cancelled(SparsekvError): code = 1
class Unknown(SparsekvError): code = 2
class InvalidArgument(SparsekvError, ValueError): code = 3
class DeadlineExceeded(SparsekvError, TimeoutError): code = 4
class NotFound(SparsekvError, KeyError): code = 5
class AlreadyExists(SparsekvError): code = 6
class PermissionDenied(SparsekvError, PermissionError): code = 7
class ResourceExhausted(SparsekvError, MemoryError): code = 8
class FailedPrecondition(SparsekvError): code = 9
class Aborted(SparsekvError): code = 10
class OutOfRange(SparsekvError, IndexError): code = 11
class Unimplemented(SparsekvError, NotImplementedError): code = 12
class Internal(SparsekvError): code = 13
class Unavailable(SparsekvError, ConnectionError): code = 14
class DataLoss(SparsekvError): code = 15
class Unauthenticated(SparsekvError): code = 16


_BY_CODE = {cls.code: cls for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                                      PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                                      Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)}

# KeyError's str() quotes its argument; ours read like the others.
NotFound.__str__ = lambda self: self.message  # type: ignore[assignment]


def _check(code: int) -> None:
    if code != 0:
        raise _BY_CODE.get(code, SparsekvError)(_lib.last_error(), code)


def version() -> str:
    """The version of the libsparsekv in use."""
    return _lib.core().skv_version().decode()


# ---- buffers --------------------------------------------------------------------------------

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


# ---- client and regions ---------------------------------------------------------------------

class _Closable:
    """A native handle: ``close()`` releases it; also a context manager, and closed when collected."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Client(_Closable):
    """A connection to sparsekvd: control plane, pool mappings, lease renewal.

    Args:
        server: ``"HOST:PORT"`` or ``"unix:/path/control.sock"`` (default ``127.0.0.1:7370``).
        transport: ``"auto"`` (shm/CXL when the pool maps, else verbs, hardware fabric,
            tcp-gather, software fabric), or ``"shm"``, ``"tcp"``, ``"fabric"``, ``"verbs"``.
        token: the tenant's bearer token (default: ``$SPARSEKV_TOKEN``).
        tls: ``(ca_file, cert_file, key_file)``; cert and key may be None (no mutual TLS).
        rpc_timeout_ms: deadline of every control-plane call.
        fetch_threads: threads that copy one batch (shm).
        data_connections: connections a batch is spread over (network transports).
    Raises:
        Unavailable: the daemon cannot be reached within the timeout.
    """

    def __init__(self, server: str = "127.0.0.1:7370", transport: str = "auto", token: Optional[str] = None,
                 tls: Optional[Tuple[Optional[str], Optional[str], Optional[str]]] = None, rpc_timeout_ms: int = 0,
                 fetch_threads: int = 0, data_connections: int = 0, cluster: Optional[str] = None):
        """`cluster`: "etcd://HOST:PORT[,HOST:PORT...]/NAME" for a sparsekv cluster on etcd (then `server` is not
        used): regions are placed across the nodes, opened through the cluster's directory, and one fetch_batch
        spans nodes."""
        lib = _lib.core()
        ca, cert, key = tls if tls is not None else (None, None, None)
        enc = lambda s: s.encode() if s else None  # noqa: E731
        opts = _lib.Options(ctypes.sizeof(_lib.Options), enc(server), enc(transport), enc(token), enc(ca), enc(cert),
                            enc(key), rpc_timeout_ms, fetch_threads, data_connections, enc(cluster))
        handle = ctypes.c_void_p()
        _check(lib.skv_connect(ctypes.byref(opts), ctypes.byref(handle)))
        self._handle = handle
        self.server = server
        self.cluster = cluster
        self._device_paths: dict = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stops lease renewal and drops the connection (regions opened by it stop renewing)."""
        for path in list(self._device_paths.values()):
            path.close()
        self._device_paths.clear()
        if getattr(self, "_handle", None):
            _lib.core().skv_client_free(self._handle)
            self._handle = None

    def create(self, key: str, layers: int, entry_bytes: int, capacity_tokens: int = 0, ttl_ms: int = 0,
               replicas: int = 1) -> "Region":
        """Creates a region and returns its writer handle (it holds the region's write lease).

        `replicas` (clusters): copies kept on that many nodes once the region is sealed.
        Raises AlreadyExists, InvalidArgument (shape), ResourceExhausted (pool or quota)."""
        handle = ctypes.c_void_p()
        _check(_lib.core().skv_create_replicated(self._handle, key.encode(), layers, entry_bytes, capacity_tokens,
                                                 ttl_ms, replicas, ctypes.byref(handle)))
        return Region(self, handle)

    def open(self, key: str) -> "Region":
        """Opens a region read-only: page tables, committed length and a lease. Raises NotFound."""
        handle = ctypes.c_void_p()
        _check(_lib.core().skv_open(self._handle, key.encode(), 0, ctypes.byref(handle)))
        return Region(self, handle)

    def open_for_write(self, key: str) -> "Region":
        """Opens an unsealed region and takes its write lease (prefill -> decode handoff).

        Raises FailedPrecondition while another handle holds the write lease or once sealed."""
        handle = ctypes.c_void_p()
        _check(_lib.core().skv_open(self._handle, key.encode(), 1, ctypes.byref(handle)))
        return Region(self, handle)

    def delete(self, key: str) -> None:
        """Deletes a region; open handles keep reading its old bytes until their leases lapse."""
        _check(_lib.core().skv_delete(self._handle, key.encode()))

    def list(self, prefix: str = "") -> List[dict]:
        """Regions whose key starts with ``prefix``: dicts with key, sizes, committed, sealed, ..."""
        out = ctypes.c_void_p()
        _check(_lib.core().skv_list(self._handle, prefix.encode(), ctypes.byref(out)))
        return json.loads(_lib.take_string(out))

    def stats(self) -> dict:
        """Pool figures: pool/used/free/quarantined bytes, regions, leases, evictions, backing."""
        out = ctypes.c_void_p()
        _check(_lib.core().skv_stats(self._handle, ctypes.byref(out)))
        return json.loads(_lib.take_string(out))

    def transport_choices(self) -> List[str]:
        """The data-plane transports in use and why ("shm: the pool can be mapped on this host")."""
        out = ctypes.c_void_p()
        _check(_lib.core().skv_transport_choices(self._handle, ctypes.byref(out)))
        return json.loads(_lib.take_string(out))

    def fetch_batch(self, items: Sequence[Tuple["Region", int, Any, Any]]) -> None:
        """Fetches a whole decode batch at once: items of (region, layer, indices, out).

        All items are validated before any byte is written. Host outputs only (use
        ``Region.fetch(out=cuda_tensor)`` or :mod:`sparsekv.cuda` for device memory)."""
        keep = []
        arr = (_lib.FetchItem * len(items))()
        for i, (region, layer, indices, out) in enumerate(items):
            ip, n, k1 = _indices(indices)
            if _is_torch(out) and out.is_cuda:
                raise InvalidArgument(f"batch item {i}: fetch_batch takes host outputs")
            op, nbytes, k2 = _writable(out)
            keep += [k1, k2]
            arr[i] = _lib.FetchItem(region._handle, layer, ip, n, op, nbytes)
        _check(_lib.core().skv_fetch_batch(self._handle, arr, len(items)))

    def _device_path(self, region: "Region", device: int):
        from . import cuda as _cuda
        with self._lock:
            key = (device, region.layers, region.entry_bytes)
            path = self._device_paths.get(key)
            if path is None:
                path = _cuda._FetchPath(self, device, region.layers, region.entry_bytes)
                self._device_paths[key] = path
            return path


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
