#!/usr/bin/env python3
"""GPU driver of sparsekv.integrations.hisparse, called as SGLang's HiSparse coordinator calls its
host pool: per decode step a sync, per layer a swap-in of every request's top-k (with padding
past seq_lens), the entries at the returned device locations checked byte for byte against the
pool (fetched by the client), then the step's new token backed up. Usage: hisparse_driver.py HOST:PORT"""
import json
import sys

import numpy as np
import torch

import sparsekv
from sparsekv.integrations.hisparse import SparsekvHiSparseHostPool

L, E, B, T, K, STEPS = 4, 656, 4, 8192, 2048, 6


def main():
    client = sparsekv.Client(server=sys.argv[1])
    rng = np.random.default_rng(0)
    regions = []
    for b in range(B):
        r = client.create(f"hisparse-{b}", layers=L, entry_bytes=E, capacity_tokens=T + STEPS)
        for layer in range(L):
            r.write(layer, 0, rng.integers(0, 256, (T, E), dtype=np.uint8))
        r.commit(T)
        regions.append(r)
    pool = SparsekvHiSparseHostPool(client, layers=L, max_requests=B, hot_entries=6144, top_k=K, max_tokens=T + STEPS)
    for b, r in enumerate(regions):
        pool.admit(b, r)
    wrong = checked = 0
    seq = [T] * B
    for step in range(STEPS):
        pool.sync()
        for layer in range(L):
            topk = np.stack([rng.choice(seq[b] + 64, K, replace=False) for b in range(B)]).astype(np.int32)  # some past seq_len
            locs = pool.swap_in_selected_pages(torch.arange(B), torch.tensor(seq), torch.from_numpy(topk), layer)
            got = pool.hot_entries[locs.clamp(min=0).long()].cpu().numpy()
            for b in range(B):
                valid = topk[b] < seq[b]
                assert (locs[b].cpu().numpy() >= 0).tolist() == valid.tolist()
                want = regions[b].fetch(layer, topk[b][valid])
                wrong += int((got[b][valid] != want).any(axis=1).sum())
                checked += int(valid.sum())
        pool.check()
        for b in range(B):
            pool.backup(b, rng.integers(0, 256, (L, 1, E), dtype=np.uint8))
            seq[b] += 1
    print(json.dumps({"check": "hisparse", "card": torch.cuda.get_device_name(), "entries_checked": checked,
                      "wrong_entries": wrong}))
    pool.close()
    for r in regions:
        key = r.key
        r.close()
        client.delete(key)
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
