#!/usr/bin/env python3
"""ESS in miniature: with a fixed HBM budget for the KV cache, how many requests decode at once,
and how fast, with the latent cache all in HBM versus in sparsekv (indexer keys and residency
hot buffers in HBM, latent entries fetched per step from the pool). Needs a CUDA device.

Per request and context T, HBM holds
  reference: L x T x (656 + 132) bytes     (latent entries and indexer keys)
  sparsekv:  L x T x 132 + L x capacity x 656 bytes  (indexer keys, hot buffers)
so the same budget fits batch B0 = budget / reference and B1 = budget / sparsekv. Both run the
same batched decode step (decode_dsa.py's arithmetic: lightning indexer over every past token,
top-k, dequantisation, absorbed MLA attention, the new token appended) and report tokens/s.

Simplified: the model slice is random and has no weight-bound layers (MoE/MLP): ESS's gain
comes from a larger batch amortising those, so here the throughput ratio mostly shows what the
offload costs per request (see README); the next step's query drifts from the last by
--query-drift so that consecutive top-k sets overlap as in real decoding; every request's prefill bytes are the same block (so the
run fits in a few minutes), though each request has its own region, page table, hot buffer and
query; the indexer keys are not also written to sparsekv.

    python3 ess_miniature.py --server 127.0.0.1:7370 --contexts 32768,131072 --hbm-budget 8GiB
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import time

import numpy as np

import decode_dsa as d
import sparsekv
from sparsekv import cuda as skv_cuda


def parse_size(text: str) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for u, m in units.items():
        if text.endswith(u):
            return int(float(text[:-len(u)]) * m)
    return int(text)


class Step:
    """One batched decode step over B rows, shared by both paths."""

    def __init__(self, torch, L, H, HI, k, hidden, seed):
        self.t, self.L, self.H, self.HI, self.k = torch, L, H, HI, k
        g = torch.Generator(device="cuda").manual_seed(seed)
        mk = lambda *s: torch.randn(*s, device="cuda", generator=g) / float(np.sqrt(hidden))  # noqa: E731
        self.Wq = mk(L, hidden, H * d.LATENT)
        self.Wr = mk(L, hidden, H * d.ROPE)
        self.Wi = mk(L, hidden, HI * d.IDX_DIM)
        self.Ww = mk(L, hidden, HI)
        self.Wc = mk(L, hidden, d.LATENT)
        self.Wk = mk(L, hidden, d.ROPE)
        self.Wx = mk(L, hidden, d.IDX_DIM)
        self.math = d.Math(torch, "cuda")  # decode_dsa's dequantisation, on batched shapes
        self.scale = float(1.0 / np.sqrt(d.LATENT + d.ROPE))
        self.hidden = hidden

    def topk(self, index_keys, layer, n, q_idx, w_idx, chunk=8):
        """index_keys: uint8 [B, L, Tmax, 132] in HBM; the top-k of the first n tokens per row."""
        t = self.t
        B = q_idx.shape[0]
        out = []
        for b0 in range(0, B, chunk):
            keys = self.math.dequant_index(index_keys[b0:b0 + chunk, layer, :n])
            s = (t.relu(t.einsum("bhd,bnd->bhn", q_idx[b0:b0 + chunk], keys)) * w_idx[b0:b0 + chunk, :, None]).sum(1)
            out.append(t.topk(s, self.k, dim=1).indices.to(t.int32))
        return t.cat(out)

    def attend(self, entries, q_nope, q_rope):
        t = self.t
        c, rope = self.math.dequant_latent(entries)
        logits = (t.einsum("bhd,bkd->bhk", q_nope, c) + t.einsum("bhd,bkd->bhk", q_rope, rope)) * self.scale
        return t.einsum("bhk,bkd->bhd", t.softmax(logits, -1), c)

    def new_entries(self, x, layer):
        """The new token's latent entry [B, 656] and indexer key [B, 132] (quantised on the host)."""
        c = (x @ self.Wc[layer]).cpu().numpy()
        r = (x @ self.Wk[layer]).cpu().numpy()
        ki = (x @ self.Wx[layer]).cpu().numpy()
        return d.quantize_latent(c, r), d.quantize_index_key(ki)


def run(args, T, torch, client, block_lat, block_idx):
    L, H, HI, k, cap = args.layers, args.heads, args.index_heads, min(args.topk, T), args.capacity
    budget = parse_size(args.hbm_budget)
    cost_ref = L * T * (d.ENTRY + d.IDX_ENTRY)
    cost_skv = L * T * d.IDX_ENTRY + L * cap * d.ENTRY
    B0 = max(1, budget // cost_ref)
    B1 = max(1, min(args.max_batch, budget // cost_skv))
    tmax = T + args.steps + 1
    step = Step(torch, L, H, HI, k, 256, args.seed)
    lat_block = torch.tensor(block_lat[:, :T], device="cuda")    # [L, T, 656]
    idx_block = torch.tensor(block_idx[:, :T], device="cuda")    # [L, T, 132]
    results = {}
    for path, B in (("hbm", B0), ("sparsekv", B1)):
        torch.cuda.empty_cache()
        index_keys = torch.empty((B, L, tmax, d.IDX_ENTRY), dtype=torch.uint8, device="cuda")
        index_keys[:, :, :T] = idx_block
        regions, latent, cache, batch = [], None, None, None
        if path == "hbm":
            latent = torch.empty((B, L, tmax, d.ENTRY), dtype=torch.uint8, device="cuda")
            latent[:, :, :T] = lat_block
        else:
            for b in range(B):
                r = client.create(f"ess-{T}-{b}", layers=L, entry_bytes=d.ENTRY, capacity_tokens=tmax)
                for layer in range(L):
                    r.write(layer, 0, block_lat[layer, :T])
                r.commit(T)
                regions.append(r)
            batch = skv_cuda.DeviceBatch(client, L, d.ENTRY, max_slots=B, max_tokens=tmax)
            for b, r in enumerate(regions):
                batch.bind(b, r)
            cache = skv_cuda.ResidencyCache(batch, capacity=cap, max_k=k, max_batch=B)
            base = cache.hot_buffer(0, 0).data_ptr()
            hot = torch.as_tensor(skv_cuda._CudaArray(base, (B, L, cap, d.ENTRY), "|u1"), device="cuda")
            row_slots = torch.arange(B, dtype=torch.int32, device="cuda")
        hbm_used = torch.cuda.memory_allocated()
        g = torch.Generator(device="cuda").manual_seed(args.seed + 1)
        x = torch.randn(B, 256, device="cuda", generator=g)
        x_step = x
        rows = torch.arange(B, device="cuda")[:, None]
        pool = concurrent.futures.ThreadPoolExecutor(16)
        times = []
        for s in range(args.steps + 1):
            n = T + s
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            if batch is not None:
                batch.sync()
            new_lat, new_idx = [], []
            for layer in range(L):
                q_nope = (x @ step.Wq[layer]).view(B, H, d.LATENT)
                q_rope = (x @ step.Wr[layer]).view(B, H, d.ROPE)
                q_idx = (x @ step.Wi[layer]).view(B, HI, d.IDX_DIM)
                w_idx = x @ step.Ww[layer]
                topk = step.topk(index_keys, layer, n, q_idx, w_idx)
                if path == "hbm":
                    entries = latent[rows, layer, topk.long()]
                else:
                    slots = cache.lookup(layer, topk, row_slots)
                    entries = hot[rows, layer, slots.long()]
                o = step.attend(entries, q_nope, q_rope)
                le, ie = step.new_entries(x, layer)
                new_lat.append(le)
                new_idx.append(ie)
                x = o[:, 0, :256] / float(np.sqrt(d.LATENT))
            # The next step's query drifts from this one (decoding is local: consecutive steps'
            # top-k overlap, as ESS measured), instead of being a fresh random direction.
            x_step = (1 - args.query_drift) * x_step + args.query_drift * x / (x.norm(dim=1, keepdim=True) + 1e-6) * \
                x_step.norm(dim=1, keepdim=True)
            x = x_step
            # Append the new token: to HBM (reference) or to sparsekv (its latent entries).
            lat_new = np.stack(new_lat, axis=1)  # [B, L, 656]
            index_keys[:, :, n] = torch.tensor(np.stack(new_idx, axis=1), device="cuda")
            if path == "hbm":
                latent[:, :, n] = torch.tensor(lat_new, device="cuda")
            else:
                # One append per request, issued concurrently (each waits for its commit RPC; the
                # GIL is released while it does), as a decode server would.
                list(pool.map(lambda b: regions[b].append(lat_new[b][:, None, :], tokens=1), range(B)))
            torch.cuda.synchronize()
            if s > 0:
                times.append(time.perf_counter() - t0)
        step_s = float(np.median(times))
        results[path] = {"batch": B, "hbm_cache_bytes": (B * cost_ref if path == "hbm" else B * cost_skv),
                         "hbm_allocated_bytes": hbm_used, "step_ms": round(step_s * 1e3, 2),
                         "tokens_per_s": round(B / step_s, 1)}
        if cache is not None:
            c = cache.counters()
            hits, misses = sum(v["hits"] for v in c), sum(v["misses"] for v in c)
            results[path]["residency_hit_rate"] = round(hits / max(1, hits + misses), 3)
            batch.end_step()
            batch.check_errors()
            cache.close()
            batch.close()
        for r in regions:
            key = r.key
            r.close()
            client.delete(key)
        del latent, index_keys
    report = {"card": torch.cuda.get_device_name(), "context": T, "layers": L, "heads": H, "k": k, "capacity": cap,
              "hbm_budget": budget, **{f"{p}_{key}": v for p, r in results.items() for key, v in r.items()},
              "batch_ratio": round(results["sparsekv"]["batch"] / results["hbm"]["batch"], 2),
              "throughput_ratio": round(results["sparsekv"]["tokens_per_s"] / results["hbm"]["tokens_per_s"], 3)}
    print(json.dumps(report), flush=True)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:7370")
    ap.add_argument("--contexts", default="32768,131072")
    ap.add_argument("--hbm-budget", default="8GiB")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--index-heads", type=int, default=4)
    ap.add_argument("--topk", type=int, default=2048)
    ap.add_argument("--capacity", type=int, default=6144)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-batch", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--query-drift", type=float, default=0.05, help="how far a step's query moves from the last")
    args = ap.parse_args(argv)
    import torch
    contexts = [int(c) for c in args.contexts.split(",")]
    rng = np.random.default_rng(args.seed)
    tmax = max(contexts)
    # One prefill block per layer, quantised once (in chunks) and shared by every request.
    block_lat = np.empty((args.layers, tmax, d.ENTRY), np.uint8)
    block_idx = np.empty((args.layers, tmax, d.IDX_ENTRY), np.uint8)
    for layer in range(args.layers):
        for t0 in range(0, tmax, 16384):
            n = min(16384, tmax - t0)
            block_lat[layer, t0:t0 + n] = d.quantize_latent(rng.standard_normal((n, d.LATENT)).astype(np.float32),
                                                            rng.standard_normal((n, d.ROPE)).astype(np.float32))
            block_idx[layer, t0:t0 + n] = d.quantize_index_key(rng.standard_normal((n, d.IDX_DIM)).astype(np.float32))
    client = sparsekv.Client(server=args.server)
    reports = [run(args, T, torch, client, block_lat, block_idx) for T in contexts]
    client.close()
    return reports


if __name__ == "__main__":
    main()
