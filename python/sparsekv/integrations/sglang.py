"""sparsekv as an SGLang HiCache storage backend (the L3 tier under HiCache's host pool).

SGLang loads it with its dynamic backend::

    python -m sglang.launch_server ... --enable-hierarchical-cache \\
        --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "sparsekv",
            "module_path": "sparsekv.integrations.sglang", "class_name": "SparsekvHiCacheStorage",
            "server": "10.0.0.5:7370", "transport": "auto"}'

Each HiCache page (a content hash key -> one page of KV for every layer) is one sealed sparsekv
region ``hicache/<model>[/<tp rank>]/<key>``: entry 0 is a small header (byte length, dtype,
shape), entries 1.. hold the page's bytes in 4 KiB entries. Keys are content hashes, so a second
``set`` of an existing key is a success without writing. ``batch_get_v1``/``batch_set_v1`` move
pages between sparsekv and HiCache's host pool by host index (``get_data_page`` /
``set_from_flat_data_page``), without an intermediate tensor on the write side.

Implements SGLang's ``HiCacheStorage`` interface (``get``, ``batch_get``, ``set``, ``batch_set``,
``exists``, ``batch_exists``, ``batch_get_v1``, ``batch_set_v1``, ``clear``, ``get_stats``); it
subclasses SGLang's class when SGLang is importable and works without it (the tests).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, List, Optional

import sparsekv

try:  # pragma: no cover - SGLang is not installable where the tests run
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
except Exception:  # noqa: BLE001
    class _Base:  # the interface, for use without SGLang
        def register_mem_pool_host(self, mem_pool_host) -> None:
            self.mem_pool_host = mem_pool_host

ENTRY = 4096
_MAGIC = b"SKVH"


def _flat_bytes(value: Any):
    """(contiguous uint8 view or bytes-like, dtype name, shape) of a tensor or buffer."""
    if hasattr(value, "data_ptr"):
        import torch
        t = value.detach()
        if t.is_cuda:
            t = t.cpu()
        t = t.contiguous()
        return t.view(torch.uint8).reshape(-1), str(t.dtype).replace("torch.", ""), list(t.shape)
    mv = memoryview(value).cast("B")
    return mv, "uint8", [mv.nbytes]


class SparsekvHiCacheStorage(_Base):
    """HiCache L3 storage in a sparsekv pool (see the module docstring)."""

    def __init__(self, storage_config: Any = None, client: Optional[sparsekv.Client] = None, server: Optional[str] = None,
                 namespace: str = "hicache", **kwargs: Any):
        extra = (getattr(storage_config, "extra_config", None) or {}) if storage_config is not None else {}
        server = server or extra.get("server") or os.environ.get("SPARSEKV_SERVER") or "127.0.0.1:7370"
        self.client = client or sparsekv.Client(server=server, transport=extra.get("transport", "auto"),
                                                token=extra.get("token"))
        parts = [namespace]
        model = getattr(storage_config, "model_name", None)
        if model:
            parts.append(model.replace("/", "-"))
        if storage_config is not None and not getattr(storage_config, "is_mla_model", False):
            parts.append(f"tp{storage_config.tp_rank}of{storage_config.tp_size}")
        self.prefix = "/".join(parts) + "/"
        self.mem_pool_host = None

    # ---- helpers
    def _key(self, key: str) -> str:
        return self.prefix + key

    def _store(self, key: str, value: Any) -> bool:
        data, dtype, shape = _flat_bytes(value)
        nbytes = len(data) if not hasattr(data, "numel") else data.numel()
        header = json.dumps({"bytes": nbytes, "dtype": dtype, "shape": shape}).encode()
        if len(header) + 8 > ENTRY:
            raise sparsekv.InvalidArgument(f"page {key!r}: shape {shape} does not fit the header entry")
        tokens = 1 + (nbytes + ENTRY - 1) // ENTRY
        try:
            region = self.client.create(self._key(key), layers=1, entry_bytes=ENTRY, capacity_tokens=tokens)
        except sparsekv.AlreadyExists:
            return True  # content-addressed: the page is there
        try:
            head = bytearray(ENTRY)
            head[:8] = _MAGIC + struct.pack("<I", len(header))
            head[8:8 + len(header)] = header
            region.write(0, 0, head)
            whole = nbytes // ENTRY
            if whole:
                region.write(0, 1, data[: whole * ENTRY])
            if nbytes % ENTRY:
                tail = bytearray(ENTRY)
                rest = data[whole * ENTRY:]
                tail[: nbytes % ENTRY] = rest.numpy().tobytes() if hasattr(rest, "numpy") else bytes(rest)
                region.write(0, 1 + whole, tail)
            region.commit(tokens)
            region.seal()
            return True
        except sparsekv.SparsekvError:
            region.close()
            try:
                self.client.delete(self._key(key))
            except sparsekv.SparsekvError:
                pass
            return False
        finally:
            region.close()

    def _load(self, key: str, target: Any = None):
        try:
            region = self.client.open(self._key(key))
        except sparsekv.NotFound:
            return None
        with region:
            if not region.sealed:
                return None  # being written: not a hit yet
            import numpy as np
            head = region.fetch(0, [0]).tobytes()
            if head[:4] != _MAGIC:
                return None
            (length,) = struct.unpack("<I", head[4:8])
            meta = json.loads(head[8:8 + length])
            nbytes = meta["bytes"]
            count = (nbytes + ENTRY - 1) // ENTRY
            raw = np.empty((count, ENTRY), np.uint8)
            if count:
                region.fetch(0, np.arange(1, 1 + count, dtype=np.int32), out=raw)
            flat = raw.reshape(-1)[:nbytes]
            if target is not None and hasattr(target, "data_ptr"):
                import torch
                if not target.is_contiguous() or target.numel() * target.element_size() < nbytes:
                    raise sparsekv.InvalidArgument(f"page {key!r}: the target cannot hold {nbytes} contiguous bytes")
                target.view(torch.uint8).reshape(-1)[:nbytes].copy_(torch.from_numpy(flat))
                return target
            if target is not None:
                memoryview(target).cast("B")[:nbytes] = flat.tobytes()
                return target
            import torch
            dtype = getattr(torch, meta["dtype"], torch.uint8)
            return torch.from_numpy(flat.copy()).view(dtype).reshape(meta["shape"])

    # ---- HiCacheStorage
    def register_mem_pool_host(self, mem_pool_host) -> None:
        self.mem_pool_host = mem_pool_host

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        return self._load(key, target_location)

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None, target_sizes: Optional[Any] = None):
        targets = target_locations if target_locations is not None else [None] * len(keys)
        return [self._load(k, t) for k, t in zip(keys, targets)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        source = value if value is not None else target_location
        if source is None:
            raise sparsekv.InvalidArgument(f"set({key!r}) without a value")
        return self._store(key, source)

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        sources = values if values is not None else target_locations
        return all(self._store(k, v) for k, v in zip(keys, sources))

    def exists(self, key: str) -> bool:
        try:
            with self.client.open(self._key(key)) as region:
                return region.sealed
        except sparsekv.NotFound:
            return False

    def batch_exists(self, keys: List[str], extra_info: Any = None) -> int:
        for i, key in enumerate(keys):
            if not self.exists(key):
                return i
        return len(keys)

    def _page_index(self, host_indices, i: int) -> int:
        page = getattr(self.mem_pool_host, "page_size", 1)
        value = host_indices[i * page]
        return int(value.item()) if hasattr(value, "item") else int(value)

    def batch_get_v1(self, keys: List[str], host_indices: Any, extra_info: Any = None) -> List[bool]:
        if self.mem_pool_host is None:
            raise sparsekv.FailedPrecondition("batch_get_v1 needs register_mem_pool_host first")
        results = []
        for i, key in enumerate(keys):
            page = self._load(key, self.mem_pool_host.get_dummy_flat_data_page())
            if page is None:
                results.append(False)
                continue
            self.mem_pool_host.set_from_flat_data_page(self._page_index(host_indices, i), page)
            results.append(True)
        return results

    def batch_set_v1(self, keys: List[str], host_indices: Any, extra_info: Any = None) -> List[bool]:
        if self.mem_pool_host is None:
            raise sparsekv.FailedPrecondition("batch_set_v1 needs register_mem_pool_host first")
        return [self._store(key, self.mem_pool_host.get_data_page(self._page_index(host_indices, i), flat=True))
                for i, key in enumerate(keys)]

    def clear(self) -> None:
        for region in self.client.list(self.prefix):
            try:
                self.client.delete(region["key"])
            except sparsekv.NotFound:
                pass

    def get_stats(self):
        return self.client.stats()
