"""The GPU path from Python: top-k entries straight from the pool into CUDA tensors.

``DeviceBatch`` mirrors the page tables of a decode batch's regions on a GPU (one batch slot
per request) and gathers ``[batch, k]`` top-k indices (a CUDA int32 tensor, -1 = padding) into a
``[batch, k, entry_bytes]`` uint8 CUDA tensor with one kernel that resolves token -> pool address
itself: no host synchronisation between the indexer and the fetch, capturable in CUDA graphs.
``ResidencyCache`` keeps per (slot, layer) a hot buffer of entries in HBM (exact LRU) and, once
per layer, turns the top-k indices into hot-buffer slots (the page table a sparse attention
kernel consumes), fetching only the misses. Both work on ``torch.cuda.current_stream()`` unless a
stream is given. See ``sparsekv/cuda.h`` for the guarantees (leases, errors, graphs).
"""
from __future__ import annotations

import ctypes
from typing import Any, Dict, List, Optional

from . import _lib
from . import _check, _Closable, Internal, InvalidArgument, Region, Client  # noqa: F401


def _stream_handle(stream: Any) -> ctypes.c_void_p:
    import torch
    if stream is None:
        stream = torch.cuda.current_stream()
    return ctypes.c_void_p(getattr(stream, "cuda_stream", stream))


def _device_int32(x: Any, device: int):
    import torch
    if not torch.is_tensor(x):
        x = torch.as_tensor(x)
    return x.to(device=f"cuda:{device}", dtype=torch.int32).contiguous()


class DeviceBatch(_Closable):
    """Regions bound to batch slots on one GPU, and the gather kernel over them."""

    def __init__(self, client: Client, layers: int, entry_bytes: int, max_slots: int = 64, max_tokens: int = 131072,
                 device: int = 0):
        self._lib = _lib.cuda()
        handle = ctypes.c_void_p()
        _check(self._lib.skv_cuda_batch_create(client._handle, device, max_slots, layers, entry_bytes, max_tokens,
                                               ctypes.byref(handle)))
        self._handle = handle
        self.device = device
        self.layers = layers
        self.entry_bytes = entry_bytes
        self.max_slots = max_slots
        self._bound: Dict[int, Region] = {}

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.skv_cuda_batch_free(self._handle)
            self._handle = None

    def bind(self, slot: int, region: Region, stream: Any = None) -> None:
        """Binds a region to a batch slot (registers its pool for device access once)."""
        _check(self._lib.skv_cuda_bind(self._handle, slot, region._handle, _stream_handle(stream)))
        self._bound[slot] = region

    def release(self, slot: int) -> None:
        _check(self._lib.skv_cuda_release(self._handle, slot))
        self._bound.pop(slot, None)

    def sync(self, stream: Any = None) -> None:
        """Uploads the pages and committed lengths the bound regions gained; once per step."""
        _check(self._lib.skv_cuda_sync(self._handle, _stream_handle(stream)))

    def gather(self, layer: int, indices: Any, row_slots: Any, out: Any = None, stream: Any = None):
        """indices: [batch, k] (CUDA int32 preferred); row_slots: [batch]; returns out
        ([batch, k, entry_bytes] uint8 CUDA tensor)."""
        import torch
        idx = _device_int32(indices, self.device)
        if idx.dim() == 1:
            idx = idx.view(1, -1)
        rows, k = idx.shape
        slots = _device_int32(row_slots, self.device).view(-1)
        if slots.numel() != rows:
            raise InvalidArgument(f"{rows} rows of indices but {slots.numel()} row slots")
        if out is None:
            out = torch.empty((rows, k, self.entry_bytes), dtype=torch.uint8, device=f"cuda:{self.device}")
        if not out.is_cuda or not out.is_contiguous() or out.numel() * out.element_size() < rows * k * self.entry_bytes:
            raise InvalidArgument(f"out must be a contiguous CUDA tensor of at least {rows * k * self.entry_bytes} bytes")
        _check(self._lib.skv_cuda_gather(self._handle, _stream_handle(stream), layer, ctypes.c_void_p(idx.data_ptr()),
                                         rows, k, ctypes.c_void_p(slots.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                                         None))
        return out

    def end_step(self, stream: Any = None) -> None:
        """Queues the end-of-step lease check (once per decode step, after its last gather)."""
        _check(self._lib.skv_cuda_end_step(self._handle, _stream_handle(stream)))

    def check_errors(self, stream: Any = None) -> None:
        """Waits for the stream; raises OutOfRange / InvalidArgument / FailedPrecondition."""
        _check(self._lib.skv_cuda_check_errors(self._handle, _stream_handle(stream)))


class _CudaArray:
    def __init__(self, ptr: int, shape, typestr: str):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": tuple(shape), "typestr": typestr, "version": 2}


class ResidencyCache(_Closable):
    """Hot buffers in HBM per (batch slot, layer), exact LRU; see the module docstring."""

    def __init__(self, batch: DeviceBatch, capacity: int = 6144, max_k: int = 2048, max_batch: int = 64):
        self._lib = _lib.cuda()
        self.batch = batch
        self.capacity = capacity
        handle = ctypes.c_void_p()
        _check(self._lib.skv_cuda_cache_create(batch._handle, capacity, max_k, max_batch, ctypes.byref(handle)))
        self._handle = handle

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.skv_cuda_cache_free(self._handle)
            self._handle = None

    def lookup(self, layer: int, indices: Any, row_slots: Any, out: Any = None, stream: Any = None):
        """Returns the hot-buffer slot of every index ([batch, k] int32 CUDA tensor; -1 for
        padding), fetching only the misses into the hot buffers."""
        import torch
        idx = _device_int32(indices, self.batch.device)
        if idx.dim() == 1:
            idx = idx.view(1, -1)
        rows, k = idx.shape
        slots = _device_int32(row_slots, self.batch.device).view(-1)
        if out is None:
            out = torch.empty((rows, k), dtype=torch.int32, device=idx.device)
        _check(self._lib.skv_cuda_cache_lookup(self._handle, _stream_handle(stream), layer, ctypes.c_void_p(idx.data_ptr()),
                                               rows, k, ctypes.c_void_p(slots.data_ptr()), ctypes.c_void_p(out.data_ptr())))
        return out

    def hot_buffer(self, slot: int, layer: int):
        """The hot buffer of (slot, layer) as a uint8 CUDA tensor [capacity, entry_bytes] (a view)."""
        import torch
        ptr = self._lib.skv_cuda_cache_hot_buffer(self._handle, slot, layer)
        return torch.as_tensor(_CudaArray(ptr, (self.capacity, self.batch.entry_bytes), "|u1"),
                               device=f"cuda:{self.batch.device}")

    def hot_entries(self):
        """Every hot buffer as one uint8 CUDA tensor [max_slots x layers x capacity, entry_bytes]
        (a view): entry i of (slot, layer) is row (slot x layers + layer) x capacity + i, the
        row :meth:`locations` gives; a sparse attention kernel reads entries there."""
        import torch
        b = self.batch
        first = self._lib.skv_cuda_cache_hot_buffer(self._handle, 0, 0)
        last = self._lib.skv_cuda_cache_hot_buffer(self._handle, b.max_slots - 1, b.layers - 1)
        rows = b.max_slots * b.layers * self.capacity
        if last != first + (rows - self.capacity) * b.entry_bytes:
            raise Internal("the residency cache's hot buffers are not one [slot][layer][entry] array")
        return torch.as_tensor(_CudaArray(first, (rows, b.entry_bytes), "|u1"), device=f"cuda:{b.device}")

    def locations(self, layer: int, hot_slots: Any, row_slots: Any):
        """The rows of :meth:`hot_entries` that a lookup's hot-buffer slots ([batch, k] int32, row r
        of slot row_slots[r]) name; -1 (padding) stays -1."""
        import torch
        base = (row_slots.to(torch.int64) * self.batch.layers + layer) * self.capacity
        return torch.where(hot_slots >= 0, hot_slots + base[:, None].to(torch.int32), hot_slots)

    def release_slot(self, slot: int, stream: Any = None) -> None:
        _check(self._lib.skv_cuda_cache_release_slot(self._handle, _stream_handle(stream), slot))

    def counters(self, reset: bool = False, stream: Any = None) -> List[dict]:
        """Per layer: {"hits": ..., "misses": ...} since the last reset."""
        layers = self.batch.layers
        hits = (ctypes.c_uint64 * layers)()
        misses = (ctypes.c_uint64 * layers)()
        _check(self._lib.skv_cuda_cache_counters(self._handle, _stream_handle(stream), hits, misses, layers, int(reset)))
        return [{"hits": hits[i], "misses": misses[i]} for i in range(layers)]


class _FetchPath:
    """Region.fetch(out=cuda_tensor): a per-client DeviceBatch whose slots hold the regions
    fetched into device memory (bound on first use, the least recently bound evicted when full;
    the DeviceBatch's own slot table says which region a slot holds)."""

    def __init__(self, client: Client, device: int, layers: int, entry_bytes: int, slots: int = 64):
        self.batch = DeviceBatch(client, layers, entry_bytes, max_slots=slots, device=device)
        self.order: List[int] = []  # bound slots, oldest first

    def close(self) -> None:
        self.batch.close()

    def _slot_of(self, region: Region) -> Optional[int]:
        return next((s for s, r in self.batch._bound.items() if r is region), None)

    def forget(self, region: Region) -> None:
        slot = self._slot_of(region)
        if slot is not None:
            self.batch.release(slot)
            self.order.remove(slot)

    def fetch(self, region: Region, layer: int, indices: Any, out: Any, stream: Any, check: bool):
        slot = self._slot_of(region)
        if slot is None:
            free = sorted(set(range(self.batch.max_slots)) - set(self.batch._bound))
            if not free:
                oldest = self.order.pop(0)
                self.batch.release(oldest)
                free = [oldest]
            slot = free[0]
            self.batch.bind(slot, region, stream)
            self.order.append(slot)
        else:
            self.batch.sync(stream)
        import torch
        idx = _device_int32(indices, self.batch.device).view(1, -1)
        k = idx.shape[1]
        if out.numel() * out.element_size() < k * region.entry_bytes:
            raise InvalidArgument(f"out holds {out.numel() * out.element_size()} bytes; {k} entries need "
                                  f"{k * region.entry_bytes}")
        slots = torch.tensor([slot], dtype=torch.int32, device=idx.device)
        self.batch.gather(layer, idx, slots, out=out, stream=stream)
        if check:
            self.batch.end_step(stream)
            self.batch.check_errors(stream)
        return out
