"""sparsekv as an SGLang HiCache storage backend (the L3 tier under HiCache's host pool).

SGLang loads it with its dynamic backend (``interface_v1`` makes SGLang call the zero-copy
``batch_get_v1`` / ``batch_set_v1``; models with extra pools, DeepSeek-V3.2's DSA indexer pool
among them, go through ``batch_*_v2``)::

    python -m sglang.launch_server ... --enable-hierarchical-cache --page-size 64 \\
        --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "sparsekv",
            "module_path": "sparsekv.integrations.sglang", "class_name": "SparsekvHiCacheStorage",
            "interface_v1": 1, "server": "10.0.0.5:7370", "transport": "auto"}'

Each HiCache page of each pool (a content hash key -> one page of that pool for every layer) is
one sealed sparsekv region ``hicache/<model>[/tp<r>of<n>][/pp<r>of<n>][/cp<r>of<n>][/<layout>]/<key>``
(the KV pool under the key itself, the DSA indexer pool under ``<key>__nsa_idx``, other pools
under ``<key>.<pool>``, as SGLang's own backends name them): entry 0 is a small header (byte
length, dtype, shape), entries 1.. hold the page's bytes in 4 KiB entries. Keys are content
hashes, so a second ``set`` of an existing key is a success without writing. Pipeline and
attention context-parallel ranks hold different layers or tokens under one hash, so they are part
of the namespace; so is the host pool's layout (dtype, page bytes) once one is registered. A
stored page whose size differs from the page asked for is a miss, never a partial hit.

Nothing raises out of the storage interface: SGLang calls it on its prefetch and backup threads,
which catch nothing. A failing call (a daemon restart, a network blip, a full pool) returns what
SGLang's own backends return on failure (False per page, a shorter hit prefix, None) and logs its
reason once per kind of failure. ``get_stats()`` returns SGLang's ``StorageMetrics`` (pages and
bandwidth of each prefetch and backup since the last call).

Implements SGLang's ``HiCacheStorage`` interface (``get``, ``batch_get``, ``set``, ``batch_set``,
``exists``, ``batch_exists``, ``batch_get_v1``, ``batch_set_v1``, ``register_mem_host_pool_v2``,
``batch_exists_v2``, ``batch_get_v2``, ``batch_set_v2``, ``clear``, ``get_stats``, ``close``); it
subclasses SGLang's class when SGLang is importable and works without it (the tests).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import threading
import time
from enum import Enum
from typing import Any, Callable, Dict, List, Optional

import sparsekv

logger = logging.getLogger(__name__)

try:  # pragma: no cover - SGLang is not installable where the tests run
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
    from sglang.srt.mem_cache.hicache_storage import PoolHitPolicy, PoolTransferResult
except Exception:  # noqa: BLE001
    class _Base:  # the interface, for use without SGLang
        def register_mem_pool_host(self, mem_pool_host) -> None:
            self.mem_pool_host = mem_pool_host

    class PoolHitPolicy(str, Enum):
        ALL_PAGES = "all_pages"
        TRAILING_PAGES = "trailing_pages"

    @dataclasses.dataclass
    class PoolTransferResult:
        kv_hit_pages: int
        extra_pool_hit_pages: Dict[str, int]

try:  # pragma: no cover
    from sglang.srt.metrics.collector import StorageMetrics
except Exception:  # noqa: BLE001
    @dataclasses.dataclass
    class StorageMetrics:  # SGLang's fields: per call, pages moved and GB/s
        prefetch_pgs: List[int] = dataclasses.field(default_factory=list)
        backup_pgs: List[int] = dataclasses.field(default_factory=list)
        prefetch_bandwidth: List[float] = dataclasses.field(default_factory=list)
        backup_bandwidth: List[float] = dataclasses.field(default_factory=list)

NSA_SUFFIX = "__nsa_idx"


def _pool_key(name: Any) -> str:
    if name is None:
        return "kv"
    return name.value if isinstance(name, Enum) else str(name)


def _scalar(x: Any) -> int:
    return int(x.item()) if hasattr(x, "item") else int(x)

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
        self._own_client = client is None
        self.client = client or sparsekv.Client(server=server, transport=extra.get("transport", "auto"),
                                                token=extra.get("token"),
                                                rpc_timeout_ms=int(extra.get("rpc_timeout_ms", 5000)))
        parts = [namespace]
        model = getattr(storage_config, "model_name", None)
        if model:
            parts.append(model.replace("/", "-"))
        if storage_config is not None and not getattr(storage_config, "is_mla_model", False):
            parts.append(f"tp{storage_config.tp_rank}of{storage_config.tp_size}")
        # Pipeline stages hold other layers, attention context-parallel ranks other tokens, under
        # one content hash: neither may read the other's pages.
        for tag, rank_names, size_names in (("pp", ("pp_rank",), ("pp_size",)),
                                            ("cp", ("attn_cp_rank", "cp_rank", "dcp_rank"),
                                             ("attn_cp_size", "cp_size", "dcp_size"))):
            rank = next((v for n in rank_names for v in (getattr(storage_config, n, None), extra.get(n))
                         if v is not None), None)
            size = next((v for n in size_names for v in (getattr(storage_config, n, None), extra.get(n))
                         if v is not None), None)
            if rank is not None and size is not None and int(size) > 1:
                parts.append(f"{tag}{int(rank)}of{int(size)}")
        self.base_prefix = "/".join(parts) + "/"
        self.prefix = self.base_prefix
        self.mem_pool_host = None
        self.registered_pools: Dict[str, Any] = {}
        self._failures: Dict[tuple, int] = {}
        self._lock = threading.Lock()
        self._metrics = StorageMetrics()
        self.evicted = 0  # pages this backend deleted to make room

    # ---- failures: never raised into SGLang's threads, logged once per kind
    def _failed(self, op: str, error: BaseException) -> None:
        kind = (op, type(error).__name__)
        with self._lock:
            seen = self._failures.get(kind, 0)
            self._failures[kind] = seen + 1
        if seen == 0:
            logger.warning("sparsekv HiCache %s failed (%s: %s); returning the failure value, further %s "
                           "failures of this kind are counted, not logged", op, type(error).__name__, error,
                           op)

    def failure_counts(self) -> Dict[str, int]:
        """How often each (call, error) kind failed, for tests and logs."""
        with self._lock:
            return {f"{op}:{err}": n for (op, err), n in self._failures.items()}

    def _guard(self, op: str, fn: Callable[[], Any], failed: Any) -> Any:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - nothing may escape into SGLang's threads
            self._failed(op, e)
            return failed() if callable(failed) else failed

    # ---- keys
    def _key(self, key: str, pool: Any = None) -> str:
        name = _pool_key(pool)
        if name == "kv":
            component = key
        elif name == "nsa":
            component = key + NSA_SUFFIX
        else:
            component = f"{key}.{name}"
        return self.prefix + component

    # ---- one page
    def _store(self, key: str, value: Any, pool: Any = None) -> bool:
        data, dtype, shape = _flat_bytes(value)
        nbytes = len(data) if not hasattr(data, "numel") else data.numel()
        header = json.dumps({"bytes": nbytes, "dtype": dtype, "shape": shape}).encode()
        if len(header) + 8 > ENTRY:
            raise sparsekv.InvalidArgument(f"page {key!r}: shape {shape} does not fit the header entry")
        tokens = 1 + (nbytes + ENTRY - 1) // ENTRY
        try:
            try:
                region = self.client.create(self._key(key, pool), layers=1, entry_bytes=ENTRY, capacity_tokens=tokens)
            except sparsekv.ResourceExhausted:
                # A full cache makes room, it does not refuse: the oldest pages of this namespace go.
                if not self._make_room():
                    raise
                region = self.client.create(self._key(key, pool), layers=1, entry_bytes=ENTRY, capacity_tokens=tokens)
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
                self.client.delete(self._key(key, pool))
            except sparsekv.SparsekvError:
                pass
            raise
        finally:
            region.close()

    def _make_room(self, pages: int = 16) -> int:
        """Deletes the `pages` oldest sealed pages of this namespace (the region limit or the pool
        is full); how many went."""
        sealed = [r for r in self.client.list(self.base_prefix) if r.get("sealed")]
        sealed.sort(key=lambda r: r.get("created_unix_ms", 0))
        gone = 0
        for r in sealed[:pages]:
            try:
                self.client.delete(r["key"])
                gone += 1
            except sparsekv.NotFound:
                pass
        with self._lock:
            self.evicted += gone
        return gone

    def _load(self, key: str, target: Any = None, pool: Any = None):
        """The page, or None on a miss (absent, being written, or stored with another size than
        the target holds)."""
        try:
            region = self.client.open(self._key(key, pool))
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
            if target is not None:
                have = target.numel() * target.element_size() if hasattr(target, "data_ptr") else \
                    memoryview(target).nbytes
                if have != nbytes:
                    self._failed("get", sparsekv.OutOfRange(
                        f"page {key!r} was stored with {nbytes} bytes, the host page holds {have} (another dtype "
                        "or layout under the same model): a miss"))
                    return None
            count = (nbytes + ENTRY - 1) // ENTRY
            raw = np.empty((count, ENTRY), np.uint8)
            if count:
                region.fetch(0, np.arange(1, 1 + count, dtype=np.int32), out=raw)
            flat = raw.reshape(-1)[:nbytes]
            if target is not None and hasattr(target, "data_ptr"):
                import torch
                if not target.is_contiguous():
                    raise sparsekv.InvalidArgument(f"page {key!r}: the target is not contiguous")
                target.view(torch.uint8).reshape(-1).copy_(torch.from_numpy(flat))
                return target
            if target is not None:
                memoryview(target).cast("B")[:nbytes] = flat.tobytes()
                return target
            import torch
            dtype = getattr(torch, meta["dtype"], torch.uint8)
            return torch.from_numpy(flat.copy()).view(dtype).reshape(meta["shape"])

    def _exists(self, key: str, pool: Any = None) -> bool:
        try:
            with self.client.open(self._key(key, pool)) as region:
                return region.sealed
        except sparsekv.NotFound:
            return False

    def _record(self, kind: str, pages: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            getattr(self._metrics, f"{kind}_pgs").append(pages)
            getattr(self._metrics, f"{kind}_bandwidth").append(nbytes / max(seconds, 1e-9) / 1e9)

    # ---- HiCacheStorage
    def register_mem_pool_host(self, mem_pool_host) -> None:
        self.mem_pool_host = mem_pool_host
        self.prefix = self.base_prefix + self._layout_tag(mem_pool_host)

    def register_mem_host_pool_v2(self, host_pool, host_pool_name) -> None:
        self.registered_pools[_pool_key(host_pool_name)] = host_pool
        if _pool_key(host_pool_name) == "kv" and self.mem_pool_host is None:
            self.register_mem_pool_host(host_pool)

    @staticmethod
    def _layout_tag(host_pool) -> str:
        """dtype and page bytes of the host pool's pages: another KV dtype or layout under the same
        model gets other keys."""
        try:
            page = host_pool.get_dummy_flat_data_page()
        except Exception:  # noqa: BLE001 - a pool without the page methods keeps the base namespace
            return ""
        dtype = str(getattr(page, "dtype", "uint8")).replace("torch.", "")
        return f"{dtype}-{page.numel() * page.element_size()}B/"

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        return self._guard("get", lambda: self._load(key, target_location), None)

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None, target_sizes: Optional[Any] = None):
        targets = target_locations if target_locations is not None else [None] * len(keys)
        return [self.get(k, t) for k, t in zip(keys, targets)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        source = value if value is not None else target_location
        if source is None:
            self._failed("set", sparsekv.InvalidArgument(f"set({key!r}) without a value"))
            return False
        return bool(self._guard("set", lambda: self._store(key, source), False))

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        sources = values if values is not None else target_locations
        if sources is None:
            return False
        return all([self.set(k, v) for k, v in zip(keys, sources)])

    def exists(self, key: str) -> bool:
        return bool(self._guard("exists", lambda: self._exists(key), False))

    def batch_exists(self, keys: List[str], extra_info: Any = None) -> int:
        for i, key in enumerate(keys):
            if not self.exists(key):
                return i
        return len(keys)

    def _read_page(self, key: str, pool_name: Any, host_pool, page_offset: int) -> bool:
        page = self._load(key, host_pool.get_dummy_flat_data_page(), pool_name)
        if page is None:
            return False
        host_pool.set_from_flat_data_page(page_offset, page)
        return True

    def _write_page(self, key: str, pool_name: Any, host_pool, page_offset: int) -> bool:
        return self._store(key, host_pool.get_data_page(page_offset, flat=True), pool_name)

    def _pages(self, op: str, keys: List[str], host_pool, host_indices, pool_name, io) -> List[bool]:
        """One page at a time, each guarded: a failing page is False, the others go on."""
        if host_pool is None:
            self._failed(op, sparsekv.FailedPrecondition(f"{op} before the host pool was registered"))
            return [False] * len(keys)
        page = getattr(host_pool, "page_size", 1) or 1
        n = host_indices.numel() if hasattr(host_indices, "numel") else len(host_indices)
        if n < len(keys) * page:
            self._failed(op, sparsekv.InvalidArgument(
                f"{len(keys)} keys of {page}-token pages but {n} host indices"))
            return [False] * len(keys)
        return [bool(self._guard(op, lambda i=i, key=key: io(key, pool_name, host_pool,
                                                             _scalar(host_indices[i * page])), False))
                for i, key in enumerate(keys)]

    def _page_bytes(self, host_pool) -> int:
        try:
            page = host_pool.get_dummy_flat_data_page()
            return page.numel() * page.element_size()
        except Exception:  # noqa: BLE001
            return 0

    def batch_get_v1(self, keys: List[str], host_indices: Any, extra_info: Any = None) -> List[bool]:
        parts = [("kv", keys, host_indices, self.mem_pool_host)]
        return self._guard("batch_get_v1", lambda: self._transfers("batch_get_v1", "prefetch", parts,
                                                                   self._read_page)["kv"],
                           lambda: [False] * len(keys))

    def batch_set_v1(self, keys: List[str], host_indices: Any, extra_info: Any = None) -> List[bool]:
        parts = [("kv", keys, host_indices, self.mem_pool_host)]
        return self._guard("batch_set_v1", lambda: self._transfers("batch_set_v1", "backup", parts,
                                                                   self._write_page)["kv"],
                           lambda: [False] * len(keys))

    # ---- v2: several pools (KV, DSA's indexer pool, ...) per key
    def batch_exists_v2(self, keys: List[str], pool_transfers: Optional[List[Any]] = None,
                        extra_info: Any = None):
        def run():
            kv = next((i for i, k in enumerate(keys) if not self._exists(k)), len(keys))
            hit: Dict[str, int] = {"kv": kv} if kv else {}
            final = kv
            for t in pool_transfers or []:
                if final == 0:
                    break
                name = _pool_key(t.name)
                if _pool_key(getattr(t, "hit_policy", "all_pages")) == "trailing_pages":
                    trailing = max(1, len(t.keys) if t.keys else 1)
                    boundary = next((n for n in range(kv, 0, -1)
                                     if all(self._exists(keys[i], name) for i in range(max(0, n - trailing), n))), 0)
                else:
                    boundary = next((i for i in range(kv) if not self._exists(keys[i], name)), kv)
                if boundary:
                    hit[name] = boundary
                final = min(final, boundary)
            return PoolTransferResult(final, hit)
        return self._guard("batch_exists_v2", run, lambda: PoolTransferResult(0, {}))

    def _parts(self, transfers: List[Any]):
        """(pool name, keys, host indices, host pool) of each of SGLang's PoolTransfers."""
        return [(_pool_key(t.name), list(t.keys or []), t.host_indices if t.host_indices is not None else [],
                 self.registered_pools.get(_pool_key(t.name)) or
                 (self.mem_pool_host if _pool_key(t.name) == "kv" else None)) for t in transfers or []]

    def _transfers(self, op: str, kind: str, parts, io) -> Dict[str, List[bool]]:
        """Moves every page of every part, each page guarded; records the call in the metrics."""
        results: Dict[str, List[bool]] = {}
        t0 = time.perf_counter()
        moved_pages = moved_bytes = 0
        for name, keys, host_indices, pool in parts:
            ok = self._pages(op, keys, pool, host_indices, name, io)
            results[name] = ok
            moved_pages += sum(ok) if name == "kv" else 0
            moved_bytes += sum(ok) * (self._page_bytes(pool) if pool is not None else 0)
        self._record(kind, moved_pages, moved_bytes, time.perf_counter() - t0)
        return results

    def batch_get_v2(self, transfers: List[Any], extra_info: Any = None) -> Dict[str, List[bool]]:
        return self._guard("batch_get_v2", lambda: self._transfers("batch_get_v2", "prefetch", self._parts(transfers),
                                                                   self._read_page),
                           lambda: {_pool_key(t.name): [False] * len(t.keys or []) for t in transfers or []})

    def batch_set_v2(self, transfers: List[Any], extra_info: Any = None) -> Dict[str, List[bool]]:
        return self._guard("batch_set_v2", lambda: self._transfers("batch_set_v2", "backup", self._parts(transfers),
                                                                   self._write_page),
                           lambda: {_pool_key(t.name): [False] * len(t.keys or []) for t in transfers or []})

    def clear(self) -> None:
        def run():
            for region in self.client.list(self.base_prefix):
                try:
                    self.client.delete(region["key"])
                except sparsekv.NotFound:
                    pass
        self._guard("clear", run, None)

    def get_stats(self):
        """SGLang's StorageMetrics since the last call (pages and GB/s of each prefetch and backup)."""
        with self._lock:
            out, self._metrics = self._metrics, StorageMetrics()
        return out

    def pool_stats(self) -> dict:
        """The daemon's pool figures (not part of SGLang's interface)."""
        return self._guard("pool_stats", self.client.stats, dict)

    def close(self) -> None:
        if self._own_client and self.client is not None:
            self.client.close()
            self.client = None
