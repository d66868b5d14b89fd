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

__all__ = [
    "Client", "Region", "SparsekvError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated", "version",
]

from . import _lib
from ._handles import _Closable  # noqa: F401  (sparsekv.cuda builds on these)
from .buffers import _indices, _is_torch, _readable, _writable  # noqa: F401
from .errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, FailedPrecondition,  # noqa: F401
                     Internal, InvalidArgument, NotFound, OutOfRange, PermissionDenied, ResourceExhausted, SparsekvError,
                     Unauthenticated, Unavailable, Unimplemented, Unknown, _BY_CODE, _check)
from .region import Region
from .client import Client


def version() -> str:
    """The version of the libsparsekv in use."""
    return _lib.core().skv_version().decode()
