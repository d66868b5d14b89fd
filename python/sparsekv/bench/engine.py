"""The decode step of DeepSeek-V3.2's per-GPU slice, on real-size weights, in two KV modes.

``Slice`` holds the weights (FP8 e4m3 with 128x128 block scales where the model has them, random
values at their real sizes); ``Decoder`` runs one batched decode step over all layers: MLA in the
absorbed form over the top-k entries the DSA indexer picks, the dense FFN or the MoE layer
(router + the local experts + the shared expert), the LM head, and appends the new token's latent
entry and indexer key. Where the latent entries live is the KV mode:

  ``HbmLatent``      every entry in HBM, in 64-token pages (SGLang's layout);
  ``SparsekvLatent`` entries in a sparsekvd pool (written by a prefill process, handed over by
                     the write lease), read through ``sparsekv.cuda.ResidencyCache`` (a hot buffer
                     per request and layer in HBM; only misses cross PCIe), the new token appended
                     to the region after each step.

The indexer keys stay in HBM in both modes (``KeyCache``), as ESS and HiSparse keep them.
``CudaOps`` runs the step on a GPU (torch._scaled_mm with DeepSeek's 1x128 / 128x128 block
scales, Triton kernels for the indexer and the sparse attention), capturable in one CUDA graph;
``CpuOps`` is the same arithmetic in float32 on CPU torch (CI's tiny configuration).

Deviations from the model, stated: the new token joins the candidate set from the next step on
(it is appended after the step, in both modes); with MTP the two rows of a request see the same
past; RoPE without YaRN's frequency correction; each local expert processes the local rows as the
stand-in for the rows expert parallelism would send it (the same count at perfect balance).
"""
from __future__ import annotations

import concurrent.futures
import math
from typing import Dict, List, Optional

import numpy as np

from .model import QUANT_BLOCK, Fp8Codec, ModelConfig, ess_overlap_target, calibrate_mix, round_up, route


# ---- ops ------------------------------------------------------------------------------------

class Fp8Weight:
    """An FP8 weight [N, K] with one fp32 scale per 128x128 block (here one value per weight:
    random codes ~ N(0, 1), scale 1/sqrt(K), so outputs keep unit scale)."""

    def __init__(self, codes, scale: float, n: int, k: int):
        self.codes = codes
        self.n, self.k = n, k
        self.scale = scale
        self.block_scales = None
        self.dense = None


class CpuOps:
    """float32 arithmetic on CPU torch; FP8 codes are uint8 through a table."""

    name = "cpu"

    def __init__(self, torch, cfg: ModelConfig):
        self.t = torch
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.codec = Fp8Codec(torch)
        self.recipe = "reference"

    # weights
    def randn_fp8(self, gen, n: int, k: int, rows_pad: int = 0) -> Fp8Weight:
        x = self.t.randn(n, k, generator=gen)
        w = Fp8Weight(self.codec.encode(x), 1.0 / math.sqrt(k), n, k)
        w.dense = self.codec.decode(w.codes) * w.scale
        return w

    def randn(self, gen, *shape, scale=1.0, dtype=None):
        return self.t.randn(*shape, generator=gen) * scale

    # activations
    def quant(self, x):
        M, K = x.shape
        xb = x.float().reshape(M, K // QUANT_BLOCK, QUANT_BLOCK)
        s = xb.abs().amax(-1).clamp(min=1e-4) / 448.0
        return self.encode(xb / s[..., None]).reshape(M, K), s

    def linear(self, xq, xs, w: Fp8Weight):
        M, K = xq.shape
        x = (self.codec.decode(xq).reshape(M, K // QUANT_BLOCK, QUANT_BLOCK) * xs[..., None]).reshape(M, K)
        return x @ w.dense.T

    def encode(self, x):
        """e4m3 codes of values already scaled into range, in this backend's code dtype."""
        return self.codec.encode(x)

    def to_bits(self, codes):
        """The codes as uint8 bytes."""
        return codes

    def quant_rows(self, x):
        """x [..., 128] -> (codes [..., 128], scale [...]) one block per row."""
        s = x.float().abs().amax(-1).clamp(min=1e-4) / 448.0
        return self.encode(x.float() / s[..., None]), s

    def quant_latent(self, c, rope):
        """The new token's latent entry in FlashMLA's FP8 layout: uint8 [R, 656]."""
        t = self.t
        R, DL = c.shape
        tiles = c.float().reshape(R, DL // QUANT_BLOCK, QUANT_BLOCK)
        s = tiles.abs().amax(-1).clamp(min=1e-4) / 448.0
        codes = self.to_bits(self.encode(tiles / s[..., None])).reshape(R, DL)
        rope_bits = rope.to(t.bfloat16).contiguous().view(t.uint8).reshape(R, -1)
        return t.cat([codes, s.contiguous().view(t.uint8).reshape(R, -1), rope_bits], dim=1)

    def dequant_latent(self, e):
        t = self.t
        DL = self.cfg.kv_lora
        nt = DL // QUANT_BLOCK
        lead = e.shape[:-1]
        codes = self.codec.decode(e[..., :DL]).reshape(*lead, nt, QUANT_BLOCK)
        s = e[..., DL:DL + 4 * nt].contiguous().view(t.float32).reshape(*lead, nt, 1)
        rope = e[..., DL + 4 * nt:].contiguous().view(t.bfloat16).float()
        return (codes * s).reshape(*lead, DL), rope

    def indexer(self, q8, w, keys: "KeyCache", layer, row_req, row_len, out):
        """logits [R, pages x 64]: sum_h w x ReLU(q . k) x k_scale over tokens < row_len."""
        t = self.t
        R = q8.shape[0]
        q = self.codec.decode(q8)  # [R, H, D]
        codes, scales = keys.layer_view(layer)  # [P, 64, D], [P, 64]
        out.fill_(float("-inf"))
        for r in range(R):
            n = int(row_len[r])
            pages = keys.page_table[int(row_req[r]), : -(-n // keys.page)].long()
            k = self.codec.decode(codes[pages].reshape(-1, q.shape[-1]))[:n]
            ks = scales[pages].reshape(-1)[:n]
            s = (t.relu(q[r] @ k.T) * w[r][:, None]).sum(0) * ks
            out[r, :n] = s
        return out

    def attention(self, q_lat, q_pe, pool, ids, scale, out):
        t = self.t
        R, H, DL = q_lat.shape
        safe = ids.long().clamp(min=0)
        c, rope = self.dequant_latent(pool[safe])  # [R, k, DL], [R, k, 64]
        logits = (t.einsum("rhd,rkd->rhk", q_lat.float(), c) + t.einsum("rhd,rkd->rhk", q_pe.float(), rope)) * scale
        logits = logits.masked_fill((ids < 0)[:, None, :], float("-inf"))
        p = t.softmax(logits, dim=-1)
        out.copy_(t.einsum("rhk,rkd->rhd", p, c))
        return out


class CudaOps(CpuOps):
    """The step on a GPU: FP8 GEMMs through torch._scaled_mm with DeepSeek's block scales (or
    row-wise scales where this torch/cuBLAS cannot do blockwise), Triton for the indexer and the
    sparse attention."""

    name = "cuda"

    def __init__(self, torch, cfg: ModelConfig, mla_config=(64, 32, 8, 1), indexer_pages=4):
        self.t = torch
        self.cfg = cfg
        self.device = torch.device("cuda")
        self.dtype = torch.bfloat16
        self.f8 = torch.float8_e4m3fn
        self.codec = None
        self.mla_config = mla_config
        self.indexer_pages = indexer_pages
        from . import kernels  # noqa: F401  (Triton compiles on first use)
        self.kernels = kernels
        self.recipe = self._probe_recipe()

    def _try_mm(self, m: int) -> Optional[str]:
        t = self.t
        try:
            a = t.randn(m, 256, device="cuda").to(self.f8)
            b = t.randn(256, 256, device="cuda").to(self.f8)
            sa = t.ones(m, 2, device="cuda").t().contiguous().t()
            sb = t.ones(2, 2, device="cuda")
            t._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb.t(), out_dtype=t.bfloat16)
            t.cuda.synchronize()
            return None
        except Exception as e:  # noqa: BLE001 - a refusal decides the recipe
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    def _probe_recipe(self) -> str:
        self.pad_rows = 0
        self.probe_error = self._try_mm(1)
        if self.probe_error is None:
            return "blockwise_1x128_128x128"
        if self._try_mm(16) is None:
            self.pad_rows = 16
            return "blockwise_1x128_128x128"
        return "rowwise"

    def randn_fp8(self, gen, n: int, k: int, rows_pad: int = 0) -> Fp8Weight:
        t = self.t
        n_alloc = round_up(n, QUANT_BLOCK)
        codes = t.empty(n_alloc, k, dtype=self.f8, device="cuda")
        chunk = max(1, (1 << 27) // k)
        for r0 in range(0, n_alloc, chunk):
            r1 = min(n_alloc, r0 + chunk)
            codes[r0:r1] = t.randn(r1 - r0, k, device="cuda", generator=gen, dtype=t.bfloat16).to(self.f8)
        if n_alloc > n:
            codes[n:].zero_()
        w = Fp8Weight(codes, 1.0 / math.sqrt(k), n, k)
        if self.recipe == "rowwise":
            w.block_scales = t.full((1, n_alloc), w.scale, device="cuda")
        else:
            w.block_scales = t.full((n_alloc // QUANT_BLOCK, k // QUANT_BLOCK), w.scale, device="cuda").t()
        return w

    def randn(self, gen, *shape, scale=1.0, dtype=None):
        t = self.t
        x = t.randn(*shape, device="cuda", generator=gen, dtype=t.float32) * scale
        return x.to(dtype or self.dtype)

    def quant(self, x):
        M, K = x.shape
        if self.recipe == "rowwise":
            s = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-4) / 448.0
            return (x.float() / s).to(self.f8), s
        xb = x.float().view(M, K // QUANT_BLOCK, QUANT_BLOCK)
        s = xb.abs().amax(-1).clamp(min=1e-4) / 448.0
        codes = (xb / s[..., None]).to(self.f8).view(M, K)
        return codes, s.t().contiguous().t()

    def linear(self, xq, xs, w: Fp8Weight):
        t = self.t
        M = xq.shape[0]
        if self.pad_rows and M % self.pad_rows:
            Mp = round_up(M, self.pad_rows)
            xq = t.cat([xq.view(t.uint8), t.zeros((Mp - M, xq.shape[1]), dtype=t.uint8, device=xq.device)]).view(self.f8)
            xs = t.cat([xs, t.ones((Mp - M, xs.shape[1]), dtype=xs.dtype, device=xs.device)]).t().contiguous().t()
        out = t._scaled_mm(xq, w.codes.t(), scale_a=xs, scale_b=w.block_scales, out_dtype=t.bfloat16)
        if out.shape[0] != M:
            out = out[:M]
        return out[:, :w.n] if w.codes.shape[0] != w.n else out

    def encode(self, x):
        return x.to(self.f8)

    def to_bits(self, codes):
        return codes.view(self.t.uint8)

    def indexer(self, q8, w, keys: "KeyCache", layer, row_req, row_len, out):
        return self.kernels.indexer_logits(q8.view(self.t.uint8), w, keys.pool, layer, keys.page_table, row_req,
                                           row_len, out, pages_per_prog=self.indexer_pages)

    def attention(self, q_lat, q_pe, pool, ids, scale, out):
        bh, bn, warps, stages = self.mla_config
        return self.kernels.sparse_mla(q_lat, q_pe, pool, ids, scale, out, bh=bh, bn=bn, num_warps=warps,
                                       num_stages=stages)


# ---- weights --------------------------------------------------------------------------------

class Slice:
    """The weights one GPU holds (see model.weight_specs for the list and sizes)."""

    def __init__(self, torch, cfg: ModelConfig, ops, seed: int = 0, progress=None):
        cfg.validate()
        self.t, self.cfg, self.ops = torch, cfg, ops
        gen = torch.Generator(device=ops.device).manual_seed(seed)
        D, H = cfg.hidden, cfg.heads
        f8 = ops.randn_fp8
        self.layers: List[Dict] = []
        for l in range(cfg.layers):
            w = {
                "attn_norm": torch.ones(D, dtype=ops.dtype, device=ops.device),
                "ffn_norm": torch.ones(D, dtype=ops.dtype, device=ops.device),
                "q_norm": torch.ones(cfg.q_lora, dtype=ops.dtype, device=ops.device),
                "kv_norm": torch.ones(cfg.kv_lora, dtype=ops.dtype, device=ops.device),
                "wq_a": f8(gen, cfg.q_lora, D), "wq_b": f8(gen, H * cfg.qk_head, cfg.q_lora),
                "wkv_a": f8(gen, cfg.kv_lora + cfg.qk_rope, D),
                "w_uk": ops.randn(gen, H, cfg.qk_nope, cfg.kv_lora, scale=cfg.qk_nope ** -0.5),
                "w_uv": ops.randn(gen, H, cfg.kv_lora, cfg.v_head, scale=cfg.kv_lora ** -0.5),
                "wo": f8(gen, D, H * cfg.v_head),
                "idx_wq_b": f8(gen, cfg.index_heads * cfg.index_dim, cfg.q_lora),
                "idx_wk": f8(gen, cfg.index_dim, D),
                "idx_k_norm_w": torch.ones(cfg.index_dim, dtype=torch.float32, device=ops.device),
                "idx_k_norm_b": torch.zeros(cfg.index_dim, dtype=torch.float32, device=ops.device),
                "idx_wproj": ops.randn(gen, cfg.index_heads, D, scale=D ** -0.5, dtype=torch.float32),
            }
            if l < cfg.dense_layers:
                w["w13"] = f8(gen, 2 * cfg.dense_inter, D)
                w["w2"] = f8(gen, D, cfg.dense_inter)
            else:
                w["gate"] = ops.randn(gen, cfg.experts, D, scale=D ** -0.5, dtype=torch.float32)
                w["gate_bias"] = ops.randn(gen, cfg.experts, scale=0.01, dtype=torch.float32)
                w["experts"] = [(f8(gen, 2 * cfg.moe_inter, D), f8(gen, D, cfg.moe_inter))
                                for _ in range(cfg.local_experts)]
                w["shared"] = (f8(gen, 2 * cfg.moe_inter * cfg.shared_experts, D),
                               f8(gen, D, cfg.moe_inter * cfg.shared_experts))
            self.layers.append(w)
            if progress:
                progress(l + 1, cfg.layers)
        self.embed = ops.randn(gen, cfg.vocab, D)
        self.final_norm = torch.ones(D, dtype=ops.dtype, device=ops.device)
        self.lm_head = ops.randn(gen, cfg.vocab, D, scale=D ** -0.5)
        self.hadamard = _hadamard(torch, cfg.index_dim).to(device=ops.device, dtype=ops.dtype)
        half = cfg.qk_rope // 2
        self.inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, half, dtype=torch.float32, device=ops.device) / half))

    def allocated_bytes(self) -> int:
        seen = 0

        def size(x):
            nonlocal seen
            if isinstance(x, Fp8Weight):
                seen += x.codes.numel() * x.codes.element_size()
                if x.block_scales is not None:
                    seen += x.block_scales.numel() * 4
            elif isinstance(x, (list, tuple)):
                for y in x:
                    size(y)
            elif hasattr(x, "numel"):
                seen += x.numel() * x.element_size()

        for w in self.layers:
            for v in w.values():
                size(v)
        for x in (self.embed, self.final_norm, self.lm_head):
            size(x)
        return seen


def _hadamard(torch, n: int):
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


# ---- prefill content (the same bytes in both modes and in the prefill process) ---------------

CONTENT_GROUPS = 4


def content_blocks(cfg: ModelConfig, tokens: int, seed: int):
    """CONTENT_GROUPS blocks of valid FP8 latent entries [tokens, 656] and indexer keys
    [tokens, 132] (NumPy uint8). Layer l of request b holds block l % G rolled by content_shift."""
    lat, keys = [], []
    DL, nt = cfg.kv_lora, cfg.kv_lora // QUANT_BLOCK
    for g in range(CONTENT_GROUPS):
        rng = np.random.default_rng(seed * 1000 + g)
        e = np.empty((tokens, cfg.latent_entry_bytes), np.uint8)
        e[:, :DL] = rng.integers(0, 0x70, (tokens, DL), dtype=np.uint8) | (rng.integers(0, 2, (tokens, DL),
                                                                                        dtype=np.uint8) << 7)
        e[:, DL:DL + 4 * nt] = rng.uniform(0.002, 0.004, (tokens, nt)).astype(np.float32).view(np.uint8)
        rope = rng.standard_normal((tokens, cfg.qk_rope)).astype(np.float32)
        e[:, DL + 4 * nt:] = (rope.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(tokens, -1)
        k = np.empty((tokens, cfg.index_key_bytes), np.uint8)
        k[:, :cfg.index_dim] = rng.integers(0, 0x70, (tokens, cfg.index_dim), dtype=np.uint8) | (
            rng.integers(0, 2, (tokens, cfg.index_dim), dtype=np.uint8) << 7)
        k[:, cfg.index_dim:] = rng.uniform(0.002, 0.004, (tokens, 1)).astype(np.float32).view(np.uint8)
        lat.append(e)
        keys.append(k)
    return lat, keys


def content_shift(layer: int, request: int, tokens: int) -> int:
    return (layer * 104729 + request * 7919) % tokens


def rolled_pieces(block, shift: int):
    """np.roll(block, shift, 0) as (first_token, piece) pairs without a copy."""
    n = block.shape[0]
    if shift == 0:
        return [(0, block)]
    return [(0, block[n - shift:]), (shift, block[:n - shift])]


# ---- caches ---------------------------------------------------------------------------------

class KeyCache:
    """Indexer keys of every layer in HBM: [L, pages, 64 x 128 codes | 64 fp32 scales]; request
    b owns pages [b x per, (b + 1) x per) (identity page table, as a fresh SGLang pool)."""

    def __init__(self, torch, cfg: ModelConfig, batch: int, tokens: int, device):
        self.t, self.cfg = torch, cfg
        self.page = cfg.page_tokens
        self.pages_per_request = -(-tokens // self.page)
        P = batch * self.pages_per_request
        self.pool = torch.zeros((cfg.layers, P, cfg.index_page_bytes), dtype=torch.uint8, device=device)
        self.page_table = torch.arange(P, dtype=torch.int32, device=device).view(batch, self.pages_per_request)

    def layer_view(self, layer):
        D, pg = self.cfg.index_dim, self.page
        lv = self.pool[layer]
        codes = lv[:, :pg * D].reshape(-1, pg, D)
        scales = lv[:, pg * D:].contiguous().view(self.t.float32).reshape(-1, pg)
        return codes, scales

    def fill(self, blocks, requests: range, context: int):
        t = self.t
        D, pg = self.cfg.index_dim, self.page
        npg = context // pg
        for l in range(self.cfg.layers):
            src = t.from_numpy(blocks[l % CONTENT_GROUPS]).to(self.pool.device)
            for b in requests:
                rolled = t.roll(src, content_shift(l, b, context), 0)
                pages = self.page_table[b, :npg].long()
                dst = self.pool[l, pages]
                dst[:, :pg * D] = rolled[:, :D].reshape(npg, pg * D)
                dst[:, pg * D:] = rolled[:, D:].reshape(npg, pg * 4)
                self.pool[l, pages] = dst

    def append(self, layer, codes, scales, row_req, row_pos):
        """Writes each row's new key (codes [R, 128] uint8, scales [R] fp32) at its position."""
        t = self.t
        D, pg = self.cfg.index_dim, self.page
        page = self.page_table[row_req.long(), (row_pos // pg).long()].long()
        off = (row_pos % pg).long()
        flat = self.pool[layer].view(-1)
        base = page * self.cfg.index_page_bytes + off * D
        flat.index_put_((base[:, None] + t.arange(D, device=flat.device)[None, :],), codes.reshape(-1, D))
        f32 = self.pool[layer].view(t.float32).view(-1)
        f32.index_put_(((page * self.cfg.index_page_bytes + pg * D) // 4 + off,), scales.float())


class HbmLatent:
    """Every latent entry in HBM: [L x pages x 64, 656], request b's pages as in KeyCache."""

    mode = "hbm"

    def __init__(self, torch, cfg: ModelConfig, keys: KeyCache, device):
        self.t, self.cfg, self.keys = torch, cfg, keys
        P = keys.pool.shape[1]
        self.per_layer = P * cfg.page_tokens
        self.pool = torch.zeros((cfg.layers * self.per_layer, cfg.latent_entry_bytes), dtype=torch.uint8, device=device)

    def fill(self, blocks, requests: range, context: int):
        t = self.t
        pg = self.cfg.page_tokens
        npg = context // pg
        for l in range(self.cfg.layers):
            src = t.from_numpy(blocks[l % CONTENT_GROUPS]).to(self.pool.device)
            for b in requests:
                rolled = t.roll(src, content_shift(l, b, context), 0)
                pages = self.keys.page_table[b, :npg].long()
                rows = (l * self.per_layer + pages[:, None] * pg + t.arange(pg, device=pages.device)[None, :]).reshape(-1)
                self.pool[rows] = rolled

    def bind(self, decoder):
        pass

    def entry_ids(self, decoder, layer, topk):
        pg = self.cfg.page_tokens
        page = self.keys.page_table[decoder.row_req_long[:, None], (topk // pg).long()]
        ids = layer * self.per_layer + page * pg + topk % pg
        return ids.to(self.t.int32)

    def append(self, decoder, layer, entries):
        pg = self.cfg.page_tokens
        page = self.keys.page_table[decoder.row_req_long, (decoder.row_pos // pg).long()].long()
        self.pool.index_put_((layer * self.per_layer + page * pg + (decoder.row_pos % pg).long(),), entries)

    def pre_step(self, decoder):
        pass

    def post_step(self, decoder):
        pass


class SparsekvLatent:
    """Latent entries in a sparsekvd pool, read through the residency cache (GPU) or fetched by
    the client (CPU, the tiny configuration's test); the new tokens appended to each region after
    every step (the write lease was handed over by the prefill process)."""

    mode = "sparsekv"

    def __init__(self, torch, cfg: ModelConfig, client, regions, device, capacity: int = 6144, max_tokens: int = 0,
                 threads: int = 16):
        self.t, self.cfg = torch, cfg
        self.client, self.regions = client, regions
        self.device = device
        self.capacity = capacity
        self.cuda = device.type == "cuda"
        self.pool_threads = concurrent.futures.ThreadPoolExecutor(threads)
        self.batch = self.cache = None
        if self.cuda:
            from sparsekv import cuda as skv_cuda
            B = len(regions)
            self.batch = skv_cuda.DeviceBatch(client, cfg.layers, cfg.latent_entry_bytes, max_slots=B,
                                              max_tokens=max_tokens)
            for b, r in enumerate(regions):
                self.batch.bind(b, r)
            self.cache = skv_cuda.ResidencyCache(self.batch, capacity=capacity, max_k=cfg.index_topk, max_batch=B)
            self.hot = self.cache.hot_entries()

    def close(self):
        if self.cache is not None:
            self.batch.end_step()
            self.batch.check_errors()
            self.cache.close()
            self.batch.close()
            self.cache = self.batch = None
        self.pool_threads.shutdown()

    def bind(self, decoder):
        t = self.t
        q = decoder.q
        decoder.staging = t.zeros((decoder.B, self.cfg.layers, q, self.cfg.latent_entry_bytes), dtype=t.uint8,
                                  device=self.device)
        decoder.staging_host = t.empty(decoder.staging.shape, dtype=t.uint8,
                                       pin_memory=self.cuda)
        decoder.slot_rows = [t.arange(decoder.B, dtype=t.int32, device=self.device) for _ in range(q)]
        decoder.hot_slots = t.empty((decoder.R, self.cfg.index_topk), dtype=t.int32, device=self.device)
        if not self.cuda:
            decoder.fetched = t.empty((decoder.R * self.cfg.index_topk, self.cfg.latent_entry_bytes), dtype=t.uint8)

    def entry_ids(self, decoder, layer, topk):
        t = self.t
        if not self.cuda:
            k = topk.shape[1]
            idx = topk.numpy()
            for r in range(decoder.R):
                b = int(decoder.row_req[r])
                self.regions[b].fetch(layer, idx[r], out=decoder.fetched[r * k:(r + 1) * k].numpy())
            decoder.attention_pool = decoder.fetched
            return t.arange(decoder.R * k, dtype=t.int32).view(decoder.R, k)
        q = decoder.q
        rows = topk.view(decoder.B, q, -1)
        for j in range(q):
            out = decoder.hot_slots.view(decoder.B, q, -1)[:, j]
            slots = self.cache.lookup(layer, rows[:, j].contiguous(), decoder.slot_rows[j])
            out.copy_(slots)
        decoder.attention_pool = self.hot
        return self.cache.locations(layer, decoder.hot_slots, decoder.row_req)

    def append(self, decoder, layer, entries):
        decoder.staging[:, layer] = entries.view(decoder.B, decoder.q, -1)

    def pre_step(self, decoder):
        if self.batch is not None:
            self.batch.sync()

    def post_step(self, decoder):
        """The step's new entries to the host and appended to every region (one append per
        request, issued concurrently; each commits)."""
        decoder.staging_host.copy_(decoder.staging, non_blocking=self.cuda)
        if self.cuda:
            self.t.cuda.current_stream().synchronize()
        host = decoder.staging_host.numpy()
        q = decoder.q
        list(self.pool_threads.map(lambda b: self.regions[b].append(host[b], tokens=q), range(decoder.B)))


# ---- the trace model --------------------------------------------------------------------------

class Trace:
    """Top-k drift like a real model's: each layer's indexer query and head weights are
    (1 - beta_l) x the request's anchor (recorded at its first decode step) + beta_l x what the
    model computed (renormalised), beta_l calibrated so that consecutive steps' top-k overlap as
    ESS measured; optionally `extra[l]` entries of every row's top-k are replaced by uniformly
    random past tokens (more misses: the '2x' and 'gpubench' traces)."""

    def __init__(self, torch, cfg: ModelConfig, betas: List[float], extra: Optional[List[int]] = None, name="ess"):
        self.t, self.cfg = torch, cfg
        self.betas = list(betas)
        self.extra = list(extra) if extra else [0] * cfg.layers
        self.name = name

    def bind(self, decoder):
        t = self.t
        cfg = self.cfg
        dev = decoder.device
        decoder.anchor_q = t.zeros((cfg.layers, decoder.R, cfg.index_heads, cfg.index_dim), dtype=decoder.dtype,
                                   device=dev)
        decoder.anchor_w = t.zeros((cfg.layers, decoder.R, cfg.index_heads), dtype=t.float32, device=dev)
        decoder.recording = True

    def mix(self, decoder, layer, q, w):
        if decoder.recording:
            decoder.anchor_q[layer].copy_(q)
            decoder.anchor_w[layer].copy_(w)
            return q, w
        b = self.betas[layer]
        if b >= 1.0:
            return q, w
        norm = 1.0 / math.sqrt((1 - b) ** 2 + b ** 2)
        q = ((1 - b) * decoder.anchor_q[layer].float() + b * q.float()) * norm
        w = ((1 - b) * decoder.anchor_w[layer] + b * w) * norm
        return q.to(decoder.dtype), w

    def inject(self, decoder, layer, topk, row_len):
        m = self.extra[layer]
        if m <= 0:
            return topk
        t = self.t
        rnd = (t.rand((topk.shape[0], m), device=topk.device) * row_len[:, None].float()).long()
        rnd = t.minimum(rnd, (row_len[:, None] - 1).long()).to(topk.dtype)
        return t.cat([topk[:, :topk.shape[1] - m], rnd], dim=1)


def calibrate_betas(torch, cfg: ModelConfig, ops, key_block, samples: int = 2, log=None) -> List[float]:
    """beta per layer for ESS's consecutive-step overlap (model.ess_overlap_target), on one
    request's real keys (dequantised) with Gaussian queries and weights standing in for the
    model's fresh ones."""
    t = torch
    dev = ops.device
    kb = t.from_numpy(key_block).to(dev)
    codes = kb[:, :cfg.index_dim]
    if ops.codec is not None:
        keys = ops.codec.decode(codes)
    else:
        keys = codes.view(t.float8_e4m3fn).float()
    keys = keys * kb[:, cfg.index_dim:].contiguous().view(t.float32)
    n = keys.shape[0]
    k = min(cfg.index_topk, n)
    gen = t.Generator(device=dev).manual_seed(1234)
    H, D = cfg.index_heads, cfg.index_dim
    qa = t.randn(samples, H, D, device=dev, generator=gen)
    wa = t.randn(samples, H, device=dev, generator=gen)
    q1, q2 = t.randn(2, samples, H, D, device=dev, generator=gen)
    w1, w2 = t.randn(2, samples, H, device=dev, generator=gen)

    def sel(q, w):
        s = (t.relu(t.einsum("shd,nd->shn", q, keys)) * w[..., None]).sum(1)
        return s.topk(k, dim=-1).indices

    def overlap_at(beta):
        a = sel((1 - beta) * qa + beta * q1, (1 - beta) * wa + beta * w1)
        b = sel((1 - beta) * qa + beta * q2, (1 - beta) * wa + beta * w2)
        both = t.cat([a, b], dim=1).sort(dim=1).values
        return float((both[:, 1:] == both[:, :-1]).sum()) / (k * samples)

    betas, cache = [], {}
    for layer in range(cfg.layers):
        target = ess_overlap_target(layer, cfg.layers)[1]
        if target not in cache:
            cache[target] = calibrate_mix(overlap_at, target)
            if log:
                log(f"trace: overlap target {target:.3f} -> beta {cache[target]:.4f} "
                    f"(check: {overlap_at(cache[target]):.3f})")
        betas.append(cache[target])
    return betas


# ---- the decoder ------------------------------------------------------------------------------

class Decoder:
    """B requests (q rows each: 1, or 2 with MTP) decoding together over a Slice; one call of
    step_body() is one decode step of all layers, capturable in a CUDA graph."""

    def __init__(self, slice_: Slice, keys: KeyCache, latent, trace: Trace, batch: int, context: int, q: int = 1,
                 first_request: int = 0):
        t = slice_.t
        self.t, self.cfg, self.s, self.ops = t, slice_.cfg, slice_, slice_.ops
        self.keys, self.latent, self.trace = keys, latent, trace
        self.B, self.q, self.R = batch, q, batch * q
        self.device, self.dtype = slice_.ops.device, slice_.ops.dtype
        cfg = self.cfg
        dev = self.device
        self.first_request = first_request
        self.row_req = (t.arange(self.R, device=dev) // q + first_request).to(t.int32)
        self.row_req_long = self.row_req.long()
        self.row_j = (t.arange(self.R, device=dev) % q)
        self.pos = t.full((batch,), context, dtype=t.int64, device=dev)  # committed tokens per request
        self.tokens = (t.arange(self.R, device=dev) * 7919 % cfg.vocab).long()
        self.hidden_out = t.zeros((self.R, cfg.hidden), dtype=self.dtype, device=dev)
        self.logits = t.empty((self.R, keys.pages_per_request * keys.page), dtype=t.float32, device=dev)
        self.topk_log = t.zeros((cfg.layers, self.R, cfg.index_topk), dtype=t.int32, device=dev)
        self.q_lat = t.empty((self.R, cfg.heads, cfg.kv_lora), dtype=self.dtype, device=dev)
        self.o_lat = t.empty((self.R, cfg.heads, cfg.kv_lora), dtype=self.dtype, device=dev)
        self.attention_pool = getattr(latent, "pool", None)
        trace.bind(self)
        latent.bind(self)
        self.graph = None

    # positions of this step's rows
    @property
    def row_pos(self):
        return self.pos[self.row_req_long - self.first_request] + self.row_j

    def _rms(self, x, w, eps=1e-6):
        xf = x.float()
        return (xf * self.t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(self.dtype)

    def _rope(self, x, pos, interleaved: bool):
        t = self.t
        ang = pos.float()[:, None] * self.s.inv_freq[None, :]  # [R, half]
        cos, sin = t.cos(ang), t.sin(ang)
        shape = x.shape
        xf = x.float()
        if interleaved:
            xr = xf.reshape(*shape[:-1], -1, 2)
            a, b = xr[..., 0], xr[..., 1]
        else:
            a, b = xf[..., :shape[-1] // 2], xf[..., shape[-1] // 2:]
        while cos.dim() < a.dim():
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        ra, rb = a * cos - b * sin, a * sin + b * cos
        out = t.stack([ra, rb], -1).reshape(shape) if interleaved else t.cat([ra, rb], -1)
        return out.to(self.dtype)

    def _mlp(self, xq, xs, w13, w2):
        ops = self.ops
        h = ops.linear(xq, xs, w13)
        inter = w13.n // 2
        a = (self.t.nn.functional.silu(h[:, :inter].float()) * h[:, inter:].float()).to(self.dtype)
        aq, as_ = ops.quant(a)
        return ops.linear(aq, as_, w2)

    def step_body(self):
        t, cfg, ops, s = self.t, self.cfg, self.ops, self.s
        R, H = self.R, cfg.heads
        pos = self.row_pos
        row_len = self.pos[self.row_req_long - self.first_request].to(t.int32)
        h = s.embed[self.tokens]
        for l, w in enumerate(s.layers):
            x = self._rms(h, w["attn_norm"])
            xq, xs = ops.quant(x)
            qa = self._rms(ops.linear(xq, xs, w["wq_a"]), w["q_norm"])
            qaq, qas = ops.quant(qa)
            qf = ops.linear(qaq, qas, w["wq_b"]).view(R, H, cfg.qk_head)
            q_nope, q_pe = qf[..., :cfg.qk_nope], self._rope(qf[..., cfg.qk_nope:], pos, True)
            kv = ops.linear(xq, xs, w["wkv_a"])
            c = self._rms(kv[:, :cfg.kv_lora], w["kv_norm"])
            k_pe = self._rope(kv[:, cfg.kv_lora:cfg.kv_lora + cfg.qk_rope], pos, True)
            new_entry = ops.quant_latent(c, k_pe)
            self.q_lat.copy_(t.bmm(q_nope.transpose(0, 1), w["w_uk"]).transpose(0, 1))
            # DSA indexer
            iq = ops.linear(qaq, qas, w["idx_wq_b"]).view(R, cfg.index_heads, cfg.index_dim)
            half = cfg.qk_rope
            iq = t.cat([self._rope(iq[..., :half], pos, False), iq[..., half:]], -1) @ s.hadamard
            ik = ops.linear(xq, xs, w["idx_wk"]).float()
            ik = t.nn.functional.layer_norm(ik, (cfg.index_dim,), w["idx_k_norm_w"], w["idx_k_norm_b"]).to(self.dtype)
            ik = t.cat([self._rope(ik[:, :half], pos, False), ik[:, half:]], -1) @ s.hadamard
            iw = (x.float() @ w["idx_wproj"].T) * cfg.index_heads ** -0.5
            iq, iw = self.trace.mix(self, l, iq, iw)
            iq8, iqs = ops.quant_rows(iq)
            iw = iw * iqs * cfg.index_dim ** -0.5
            ops.indexer(iq8, iw, self.keys, l, self.row_req, row_len, self.logits)
            topk = self.logits.topk(cfg.index_topk, dim=-1, sorted=False).indices.to(t.int32)
            topk = self.trace.inject(self, l, topk, row_len)
            self.topk_log[l].copy_(topk)
            ids = self.latent.entry_ids(self, l, topk)
            ops.attention(self.q_lat, q_pe.contiguous(), self.attention_pool, ids, cfg.softmax_scale, self.o_lat)
            o = t.bmm(self.o_lat.transpose(0, 1), w["w_uv"]).transpose(0, 1).reshape(R, H * cfg.v_head)
            oq, os_ = ops.quant(o.contiguous())
            h = h + ops.linear(oq, os_, w["wo"]).to(self.dtype)
            # the new token's cache entries
            k8, ks = ops.quant_rows(ik)
            self.keys.append(l, ops.to_bits(k8), ks, self.row_req, pos)
            self.latent.append(self, l, new_entry)
            # FFN
            x = self._rms(h, w["ffn_norm"])
            xq, xs = ops.quant(x)
            if "w13" in w:
                y = self._mlp(xq, xs, w["w13"], w["w2"])
            else:
                _, rw = route(t, x.float() @ w["gate"].T, w["gate_bias"], cfg)
                y = self._mlp(xq, xs, *w["shared"]).float()
                for j, (w13, w2) in enumerate(w["experts"]):
                    y = y + rw[:, j % rw.shape[1]:j % rw.shape[1] + 1] * self._mlp(xq, xs, w13, w2).float()
                y = y.to(self.dtype)
            h = h + y
        hf = self._rms(h, s.final_norm)
        self.hidden_out.copy_(hf)
        logits = hf @ s.lm_head.T
        self.tokens.copy_(logits.argmax(-1))
        self.pos.add_(self.q)

    # one step, eager or replayed
    def step(self):
        self.latent.pre_step(self)
        self.run_body()
        self.latent.post_step(self)
        self.recording = False  # the first step recorded the trace anchors

    def run_body(self):
        """The step's device work: the captured graph when there is one, else eagerly."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step_body()

    def capture(self):
        """Captures step_body() in a CUDA graph (after one eager step has compiled the kernels)."""
        t = self.t
        g = t.cuda.CUDAGraph()
        with t.cuda.graph(g):
            self.step_body()
        self.graph = g
        return g

    def measured_overlap(self, previous):
        """Per layer: mean |topk_now & topk_prev| / k over rows (device tensors [L, R, k])."""
        t = self.t
        both = t.cat([self.topk_log, previous], dim=2).sort(dim=2).values
        inter = (both[:, :, 1:] == both[:, :, :-1]).sum(2).float() / self.cfg.index_topk
        return inter.mean(1).tolist()
