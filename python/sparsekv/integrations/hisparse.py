"""sparsekv as SGLang HiSparse's host pool: top-k entries swapped from the pool into per-request
hot buffers in HBM, each decode step and layer.

HiSparse keeps every request's latent cache in a pinned host pool and, per layer, swaps the
indexer's top-k pages into a per-request GPU hot buffer (``swap_in_selected_pages``), handing
FlashMLA the device locations of those entries; new tokens are backed up to the host pool. Here
the host pool is a sparsekvd pool (shm, CXL, or a network transport) and the swap-in is
``sparsekv.cuda.ResidencyCache`` (exact LRU over a hot buffer per request and layer; only misses
cross PCIe, gathered on the device without a host round trip, capturable in a CUDA graph)::

    pool = SparsekvHiSparseHostPool(client, layers=61, max_requests=64, hot_entries=6144)
    pool.admit(req_pool_index, client.open_for_write(key))       # prefill handed the write lease
    ...
    pool.sync()                                                   # once per step, before the layers
    locs = pool.swap_in_selected_pages(req_pool_indices, seq_lens, topk_indices, layer_id)
    kv = pool.hot_entries                                         # [slots x layers x hot, 656] uint8
    # FlashMLA's sparse decode reads kv[locs] (locs: [batch, k] int32, -1 = padding)
    pool.backup(req_pool_index, new_entries)                      # [layers, tokens, 656] after the step

Every index at or past its request's ``seq_lens`` becomes padding (-1): a top-k list padded by
the indexer costs nothing. Errors of the device path (an index past the committed length, a
lapsed lease) surface from :meth:`check` as the package's exceptions.
"""
from __future__ import annotations

from typing import Any, Dict

import sparsekv
from sparsekv import cuda as skv_cuda


class SparsekvHiSparseHostPool:
    """HiSparse's host pool and swap-in on sparsekv (see the module docstring)."""

    def __init__(self, client: sparsekv.Client, layers: int, entry_bytes: int = 656, max_requests: int = 64,
                 hot_entries: int = 6144, top_k: int = 2048, max_tokens: int = 131072, device: int = 0):
        self.layers, self.entry_bytes = layers, entry_bytes
        self.batch = skv_cuda.DeviceBatch(client, layers, entry_bytes, max_slots=max_requests, max_tokens=max_tokens,
                                          device=device)
        self.cache = skv_cuda.ResidencyCache(self.batch, capacity=hot_entries, max_k=top_k, max_batch=max_requests)
        self.device = device
        self.regions: Dict[int, sparsekv.Region] = {}
        self.hot_entries = self.cache.hot_entries()

    def close(self) -> None:
        self.cache.close()
        self.batch.close()

    def admit(self, req_pool_index: int, region: sparsekv.Region) -> None:
        """Binds a request's region (opened for write: its decode appends go through backup)."""
        self.batch.bind(req_pool_index, region)
        self.regions[req_pool_index] = region

    def release(self, req_pool_index: int) -> None:
        """The request finished: its hot buffers are emptied and its slot freed."""
        self.cache.release_slot(req_pool_index)
        self.batch.release(req_pool_index)
        self.regions.pop(req_pool_index, None)

    def sync(self) -> None:
        """Once per decode step, before its first swap-in: the pages and lengths the regions gained."""
        self.batch.sync()

    def swap_in_selected_pages(self, req_pool_indices: Any, seq_lens: Any, topk_indices: Any, layer_id: int):
        """For each row (a request slot), the device location in :attr:`hot_entries` of each of its
        top-k tokens, after copying the misses in: int32 CUDA [batch, k], -1 for padding."""
        import torch
        dev = f"cuda:{self.device}"
        slots = torch.as_tensor(req_pool_indices, device=dev).to(torch.int32).view(-1)
        lens = torch.as_tensor(seq_lens, device=dev).view(-1, 1)
        topk = torch.as_tensor(topk_indices, device=dev)
        topk = torch.where((topk >= 0) & (topk < lens), topk, torch.full_like(topk, -1)).to(torch.int32).contiguous()
        return self.cache.locations(layer_id, self.cache.lookup(layer_id, topk, slots), slots)

    def backup(self, req_pool_index: int, entries: Any, tokens: int = 1) -> None:
        """Appends a request's new tokens ([layers][tokens][entry] bytes, host memory) to its region."""
        self.regions[req_pool_index].append(entries, tokens=tokens)

    def check(self) -> None:
        """Waits for the stream; raises what the device path met (OutOfRange, FailedPrecondition)."""
        self.batch.end_step()
        self.batch.check_errors()
