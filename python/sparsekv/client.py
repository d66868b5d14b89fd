"""Client: a connection to sparsekvd (control plane, pool mappings, lease renewal)."""
from __future__ import annotations

import ctypes
import json
import threading
from typing import Any, List, Optional, Sequence, Tuple

from . import _lib
from ._handles import _Closable
from .buffers import _indices, _is_torch, _writable
from .errors import InvalidArgument, _check
from .region import Region


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
