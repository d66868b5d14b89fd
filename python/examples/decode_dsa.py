#!/usr/bin/env python3
"""A DeepSeek-V3.2-shaped sparse-MLA decode loop on sparsekv, checked against an in-memory cache.

A randomly initialised model slice with the real cache geometry: per token and layer one 656-byte
latent entry in FlashMLA's FP8 sparse layout (512 fp8 e4m3 values in 4 tiles of 128 with one
fp32 scale each, then 64 bf16 RoPE values) and one 132-byte indexer key (128 fp8 e4m3 values and
one fp32 scale). Prefill writes both into sparsekv regions. Each decode step, per layer: the
lightning indexer scores every past token (ReLU of per-head dot products with the fp8 keys,
weighted per head), takes the top-k (k = 2048, fewer for short contexts), fetches those latent
entries from sparsekv (through the residency cache on a GPU), dequantises them and computes
absorbed MLA attention over them; then the new token's entries are appended. A reference path
keeps the same bytes whole in memory (in HBM on a GPU) and runs the same arithmetic: the
attention outputs must be bitwise identical.

Simplified: one layer's weights are random, the query/key projections from the hidden state are
random linear maps, there is no MoE/MLP, no output projection, no RMSNorm (the hidden state of
the next layer is the attention output's first rows); the cache layout, quantisation, indexer,
top-k selection and attention arithmetic are the real ones.

    python3 decode_dsa.py --server 127.0.0.1:7370 --layers 4 --context 4096 --batch 2 --steps 4
    python3 decode_dsa.py ... --device cuda      # torch CUDA tensors and the residency cache
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import sparsekv

LATENT, ROPE, TILE = 512, 64, 128
ENTRY = LATENT + 4 * 4 + ROPE * 2  # 656
IDX_DIM = 128
IDX_ENTRY = IDX_DIM + 4  # 132
FP8_MAX = 448.0


def fp8_e4m3_table() -> np.ndarray:
    """float32 value of every e4m3fn byte (1 sign, 4 exponent bits with bias 7, 3 mantissa bits)."""
    out = np.zeros(256, np.float32)
    for b in range(256):
        s, e, m = b >> 7, (b >> 3) & 0xF, b & 7
        if e == 0xF and m == 7:
            v = np.nan
        elif e == 0:
            v = m / 8.0 * 2.0 ** -6
        else:
            v = (1 + m / 8.0) * 2.0 ** (e - 7)
        out[b] = -v if s else v
    return out


FP8 = fp8_e4m3_table()
_POS = np.argsort(FP8[:127])  # the non-negative finite codes, by value
_POS_VALUES = FP8[:127][_POS]


def fp8_encode(x: np.ndarray) -> np.ndarray:
    """Nearest e4m3 code of each value (|x| <= 448), ties to the lower magnitude."""
    mag = np.minimum(np.abs(x), FP8_MAX)
    hi = np.clip(np.searchsorted(_POS_VALUES, mag), 1, len(_POS_VALUES) - 1)
    lo = hi - 1
    pick = np.where(_POS_VALUES[hi] - mag < mag - _POS_VALUES[lo], hi, lo)
    code = _POS[pick].astype(np.uint8)
    return np.where(x < 0, code | 0x80, code).astype(np.uint8)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def quantize_latent(c: np.ndarray, rope: np.ndarray) -> np.ndarray:
    """[n, 512] latent and [n, 64] RoPE -> [n, 656] bytes in FlashMLA's FP8 sparse layout."""
    n = c.shape[0]
    tiles = c.reshape(n, 4, TILE)
    scale = np.maximum(np.abs(tiles).max(axis=2), 1e-8) / FP8_MAX  # [n, 4]
    q = fp8_encode(tiles / scale[:, :, None]).reshape(n, LATENT)
    out = np.empty((n, ENTRY), np.uint8)
    out[:, :LATENT] = q
    out[:, LATENT:LATENT + 16] = scale.astype(np.float32).view(np.uint8).reshape(n, 16)
    out[:, LATENT + 16:] = bf16_bits(rope).view(np.uint8).reshape(n, ROPE * 2)
    return out


def quantize_index_key(k: np.ndarray) -> np.ndarray:
    n = k.shape[0]
    scale = np.maximum(np.abs(k).max(axis=1), 1e-8) / FP8_MAX
    out = np.empty((n, IDX_ENTRY), np.uint8)
    out[:, :IDX_DIM] = fp8_encode(k / scale[:, None])
    out[:, IDX_DIM:] = scale.astype(np.float32).view(np.uint8).reshape(n, 4)
    return out


class Math:
    """The decode arithmetic on torch tensors (CPU or CUDA): the same ops on the same bytes in
    both paths, so their outputs are bitwise equal."""

    def __init__(self, torch, device):
        self.t = torch
        self.device = device
        self.fp8 = torch.tensor(FP8, device=device)

    def dequant_latent(self, e):  # e: uint8 [..., 656] -> c [..., 512], rope [..., 64] (float32)
        t = self.t
        lead = e.shape[:-1]
        q = self.fp8[e[..., :LATENT].long()].view(*lead, 4, TILE)
        scale = e[..., LATENT:LATENT + 16].contiguous().view(t.float32).view(*lead, 4, 1)
        c = (q * scale).view(*lead, LATENT)
        rope_bits = e[..., LATENT + 16:].contiguous().view(t.int16).to(t.int32) & 0xFFFF
        rope = (rope_bits << 16).view(t.float32)
        return c, rope

    def dequant_index(self, e):  # uint8 [..., 132] -> [..., 128]
        t = self.t
        return self.fp8[e[..., :IDX_DIM].long()] * e[..., IDX_DIM:].contiguous().view(t.float32)

    def topk(self, q_idx, w_idx, keys, k):
        scores = (self.t.relu(q_idx @ keys.T) * w_idx[:, None]).sum(0)  # [n]
        # Ties broken by token order, identically in both paths.
        order = self.t.argsort(-scores.double() * 1e6 + self.t.arange(scores.numel(), device=scores.device) * 1e-9)
        return order[:k].to(self.t.int32)

    def attention(self, q_nope, q_rope, c, rope, scale):
        logits = (q_nope @ c.T + q_rope @ rope.T) * scale  # [H, k]
        p = self.t.softmax(logits, dim=-1)
        return p @ c  # [H, 512]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:7370")
    ap.add_argument("--transport", default="auto")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--index-heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--topk", type=int, default=2048)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    math = Math(torch, device)
    rng = np.random.default_rng(args.seed)
    L, H, HI, B, T = args.layers, args.heads, args.index_heads, args.batch, args.context
    k = min(args.topk, T)
    hidden = 256
    # Random weights: hidden -> query latent/rope/indexer query/indexer weights, new-token cache.
    W = {name: (rng.standard_normal(shape) / np.sqrt(hidden)).astype(np.float32) for name, shape in {
        "q_nope": (L, hidden, H * LATENT), "q_rope": (L, hidden, H * ROPE), "q_idx": (L, hidden, HI * IDX_DIM),
        "w_idx": (L, hidden, HI), "c_kv": (L, hidden, LATENT), "k_rope": (L, hidden, ROPE), "k_idx": (L, hidden, IDX_DIM),
    }.items()}
    Wt = {name: torch.tensor(w, device=device) for name, w in W.items()}
    softmax_scale = float(1.0 / np.sqrt(LATENT + ROPE))

    client = sparsekv.Client(server=args.server, transport=args.transport)
    tag = f"dsa-{int(time.time() * 1e3)}"
    latent_regions, index_regions = [], []
    ref_latent = np.empty((B, L, T + args.steps, ENTRY), np.uint8)
    ref_index = np.empty((B, L, T + args.steps, IDX_ENTRY), np.uint8)
    t0 = time.perf_counter()
    for b in range(B):
        lat = client.create(f"{tag}-lat-{b}", layers=L, entry_bytes=ENTRY, capacity_tokens=T)
        idx = client.create(f"{tag}-idx-{b}", layers=L, entry_bytes=IDX_ENTRY, capacity_tokens=T)
        for layer in range(L):
            c = rng.standard_normal((T, LATENT)).astype(np.float32)
            r = rng.standard_normal((T, ROPE)).astype(np.float32)
            ki = rng.standard_normal((T, IDX_DIM)).astype(np.float32)
            ref_latent[b, layer, :T] = quantize_latent(c, r)
            ref_index[b, layer, :T] = quantize_index_key(ki)
            lat.write(layer, 0, ref_latent[b, layer, :T])
            idx.write(layer, 0, ref_index[b, layer, :T])
        lat.commit(T)
        idx.commit(T)
        latent_regions.append(lat)
        index_regions.append(idx)
    prefill_s = time.perf_counter() - t0

    # GPU: indexer keys in HBM (both paths), latent entries through the residency cache.
    cache = batch_dev = None
    if cuda:
        from sparsekv import cuda as skv_cuda
        batch_dev = skv_cuda.DeviceBatch(client, L, ENTRY, max_slots=B, max_tokens=T + args.steps)
        for b in range(B):
            batch_dev.bind(b, latent_regions[b])
        cache = skv_cuda.ResidencyCache(batch_dev, capacity=max(k, min(6144, T + args.steps)), max_k=k, max_batch=B)
        ref_latent_dev = torch.tensor(ref_latent, device=device)
    max_diff = 0.0
    identical = True
    outputs = 0
    h = rng.standard_normal((B, hidden)).astype(np.float32)
    step_s = []
    for step in range(args.steps):
        n = T + step  # tokens in the cache
        x = torch.tensor(h, device=device)
        new_lat = np.empty((B, L, 1, ENTRY), np.uint8)
        new_idx = np.empty((B, L, 1, IDX_ENTRY), np.uint8)
        if cuda:
            batch_dev.sync()
        t1 = time.perf_counter()
        for layer in range(L):
            q_nope = (x @ Wt["q_nope"][layer]).view(B, H, LATENT)
            q_rope = (x @ Wt["q_rope"][layer]).view(B, H, ROPE)
            q_idx = (x @ Wt["q_idx"][layer]).view(B, HI, IDX_DIM)
            w_idx = x @ Wt["w_idx"][layer]
            topk = []
            for b in range(B):
                keys = math.dequant_index(torch.tensor(ref_index[b, layer, :n], device=device))
                topk.append(math.topk(q_idx[b], w_idx[b], keys, k))
            topk_t = torch.stack(topk)  # [B, k] int32
            # The sparsekv path.
            if cuda:
                slots = cache.lookup(layer, topk_t, torch.arange(B, dtype=torch.int32, device=device))
                fetched = [cache.hot_buffer(b, layer)[slots[b].long()] for b in range(B)]
            else:
                fetched = [torch.from_numpy(latent_regions[b].fetch(layer, topk_t[b].numpy())) for b in range(B)]
            out_next = []
            for b in range(B):
                c, rope = math.dequant_latent(fetched[b])
                o = math.attention(q_nope[b], q_rope[b], c, rope, softmax_scale)
                # The reference path: the same cache whole in memory.
                ref_entries = (ref_latent_dev[b, layer][topk_t[b].long()] if cuda
                               else torch.from_numpy(ref_latent[b, layer][topk_t[b].numpy()]))
                rc, rrope = math.dequant_latent(ref_entries)
                ro = math.attention(q_nope[b], q_rope[b], rc, rrope, softmax_scale)
                identical &= bool(torch.equal(o, ro))
                max_diff = max(max_diff, float((o - ro).abs().max()))
                outputs += 1
                out_next.append(o[0, :hidden])
            # The new token's cache entries for this layer.
            xn = x.cpu().numpy()
            c_new = xn @ W["c_kv"][layer]
            r_new = xn @ W["k_rope"][layer]
            k_new = xn @ W["k_idx"][layer]
            new_lat[:, layer, 0] = quantize_latent(c_new, r_new)
            new_idx[:, layer, 0] = quantize_index_key(k_new)
            x = torch.stack(out_next) / float(np.sqrt(LATENT))
        if cuda:
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - t1)
        for b in range(B):
            latent_regions[b].append(new_lat[b], tokens=1)
            index_regions[b].append(new_idx[b], tokens=1)
            ref_latent[b, :, n] = new_lat[b, :, 0]
            ref_index[b, :, n] = new_idx[b, :, 0]
            if cuda:
                ref_latent_dev[b, :, n] = torch.tensor(new_lat[b, :, 0], device=device)
        h = x.cpu().numpy()
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "layers": L, "heads": H, "context": T, "batch": B,
        "steps": args.steps, "k": k, "transport": latent_regions[0].transport, "outputs_compared": outputs,
        "bitwise_identical": identical, "max_abs_diff": max_diff, "prefill_s": round(prefill_s, 3),
        "decode_step_ms_median": round(1e3 * float(np.median(step_s)), 2),
        "decode_tokens_per_s": round(B / float(np.median(step_s)), 2),
    }
    if cache is not None:
        counters = cache.counters()
        hits = sum(c["hits"] for c in counters)
        misses = sum(c["misses"] for c in counters)
        report["residency_hit_rate"] = round(hits / max(1, hits + misses), 4)
        batch_dev.end_step()
        batch_dev.check_errors()
        cache.close()
        batch_dev.close()
    for r in latent_regions + index_regions:
        key = r.key
        r.close()
        client.delete(key)
    client.close()
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["bitwise_identical"] else 1)
