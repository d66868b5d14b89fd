"""Triton kernels of the decode step (GPU only; imported by the CUDA ops of the engine).

indexer_logits: DSA's lightning indexer over the FP8 keys of every past token, in SGLang's NSA
  page layout (per 64-token page: 64 x 128 e4m3 codes, then 64 fp32 scales): per row r and past
  token t, logit = k_scale[t] x sum_h w[r, h] x ReLU(q[r, h] . k[t]) with q and k e4m3 (an FP8
  tensor-core product, fp32 accumulation); tokens at or past the row's length get -inf.
sparse_mla: absorbed MLA over a row's top-k entries in FlashMLA's 656-byte FP8 layout (512 e4m3
  codes in 4 tiles of 128 with one fp32 scale each, 64 bf16 RoPE values), dequantised inside the
  kernel: the e4m3 -> bf16 conversion is exact, the tile scale is applied to the [heads, entries]
  products (QK) and to the probabilities (PV), so no scaled copy of the entries is made. Online
  softmax; the k entries may be split over several programs, merged by their log-sum-exp.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _indexer_kernel(q_ptr, w_ptr, kpool_ptr, kscale_ptr, pt_ptr, req_ptr, len_ptr, out_ptr,
                    pt_stride, out_stride, layer_pages, pages,
                    H: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, PAGES_PER_PROG: tl.constexpr):
    r = tl.program_id(0)
    pb = tl.program_id(1)
    req = tl.load(req_ptr + r)
    n = tl.load(len_ptr + r)
    offs_h = tl.arange(0, H)
    offs_d = tl.arange(0, D)
    offs_t = tl.arange(0, PAGE)
    q = tl.load(q_ptr + r * H * D + offs_h[:, None] * D + offs_d[None, :]).to(tl.float8e4nv, bitcast=True)
    w = tl.load(w_ptr + r * H + offs_h)
    for i in tl.static_range(PAGES_PER_PROG):
        p = pb * PAGES_PER_PROG + i
        t0 = p * PAGE
        if p < pages:  # the grid rounds the row's pages up to whole programs
            if t0 < n:
                page = tl.load(pt_ptr + req * pt_stride + p).to(tl.int64) + layer_pages
                base = kpool_ptr + page * (PAGE * (D + 4))
                k = tl.load(base + offs_t[:, None] * D + offs_d[None, :]).to(tl.float8e4nv, bitcast=True)
                ks = tl.load(kscale_ptr + page * (PAGE * (D + 4) // 4) + (PAGE * D // 4) + offs_t)
                s = tl.dot(q, tl.trans(k))
                s = tl.maximum(s, 0.0) * w[:, None]
                logit = tl.sum(s, axis=0) * ks
                logit = tl.where(t0 + offs_t < n, logit, float("-inf"))
                tl.store(out_ptr + r * out_stride + t0 + offs_t, logit)
            else:
                tl.store(out_ptr + r * out_stride + t0 + offs_t, tl.full([PAGE], float("-inf"), tl.float32))


def indexer_logits(q8, w, key_pool, layer, page_table, row_req, row_len, out, pages_per_prog=4, num_warps=4):
    """q8: [R, H, 128] uint8 e4m3 codes; w: [R, H] fp32 (head weight x q scale x softmax scale);
    key_pool: [L, P, 64 * 132] uint8; page_table: [B, pages] int32; row_req / row_len: [R] int32;
    out: [R, pages * 64] fp32."""
    R, H, D = q8.shape
    pages = page_table.shape[1]
    P = key_pool.shape[1]
    page = key_pool.shape[2] // (D + 4)
    flat = key_pool.view(-1)
    grid = (R, triton.cdiv(pages, pages_per_prog))
    _indexer_kernel[grid](q8, w, flat, flat.view(torch.float32), page_table, row_req, row_len, out,
                          page_table.stride(0), out.stride(0), layer * P, pages,
                          H=H, D=D, PAGE=page, PAGES_PER_PROG=pages_per_prog, num_warps=num_warps)
    return out


@triton.jit
def _sparse_mla_kernel(ql_ptr, qr_ptr, pool_ptr, pool_f32_ptr, pool_bf16_ptr, ids_ptr, out_ptr, part_ptr, lse_ptr,
                       scale_log2, K: tl.constexpr, H: tl.constexpr, BH: tl.constexpr, BN: tl.constexpr,
                       SPLITS: tl.constexpr, ENTRY: tl.constexpr):
    TILE: tl.constexpr = 128
    DL: tl.constexpr = 512
    DR: tl.constexpr = 64
    r = tl.program_id(0)
    hb = tl.program_id(1)
    sp = tl.program_id(2)
    offs_h = hb * BH + tl.arange(0, BH)
    offs_t = tl.arange(0, TILE)
    offs_r = tl.arange(0, DR)
    qrow = (r * H + offs_h).to(tl.int64)
    qb = ql_ptr + qrow[:, None] * DL + offs_t[None, :]
    q0 = tl.load(qb)
    q1 = tl.load(qb + TILE)
    q2 = tl.load(qb + 2 * TILE)
    q3 = tl.load(qb + 3 * TILE)
    qr = tl.load(qr_ptr + qrow[:, None] * DR + offs_r[None, :])
    m = tl.full([BH], -1e30, tl.float32)
    l = tl.zeros([BH], tl.float32)
    a0 = tl.zeros([BH, TILE], tl.float32)
    a1 = tl.zeros([BH, TILE], tl.float32)
    a2 = tl.zeros([BH, TILE], tl.float32)
    a3 = tl.zeros([BH, TILE], tl.float32)
    CHUNK: tl.constexpr = K // SPLITS
    for n0 in range(sp * CHUNK, (sp + 1) * CHUNK, BN):
        offs_n = n0 + tl.arange(0, BN)
        ids = tl.load(ids_ptr + r * K + offs_n)
        valid = ids >= 0
        e = tl.where(valid, ids, 0).to(tl.int64)
        eb = pool_ptr + e[:, None] * ENTRY + offs_t[None, :]
        c0 = tl.load(eb).to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
        c1 = tl.load(eb + TILE).to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
        c2 = tl.load(eb + 2 * TILE).to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
        c3 = tl.load(eb + 3 * TILE).to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
        sb = pool_f32_ptr + e * (ENTRY // 4) + DL // 4
        s0 = tl.load(sb)
        s1 = tl.load(sb + 1)
        s2 = tl.load(sb + 2)
        s3 = tl.load(sb + 3)
        rope = tl.load(pool_bf16_ptr + e[:, None] * (ENTRY // 2) + (DL + 16) // 2 + offs_r[None, :])
        s = tl.dot(q0, tl.trans(c0)) * s0[None, :]
        s += tl.dot(q1, tl.trans(c1)) * s1[None, :]
        s += tl.dot(q2, tl.trans(c2)) * s2[None, :]
        s += tl.dot(q3, tl.trans(c3)) * s3[None, :]
        s += tl.dot(qr, tl.trans(rope))
        s = tl.where(valid[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        a0 = a0 * alpha[:, None] + tl.dot((p * s0[None, :]).to(tl.bfloat16), c0)
        a1 = a1 * alpha[:, None] + tl.dot((p * s1[None, :]).to(tl.bfloat16), c1)
        a2 = a2 * alpha[:, None] + tl.dot((p * s2[None, :]).to(tl.bfloat16), c2)
        a3 = a3 * alpha[:, None] + tl.dot((p * s3[None, :]).to(tl.bfloat16), c3)
        m = m_new
    inv = 1.0 / l
    if SPLITS == 1:
        ob = out_ptr + qrow[:, None] * DL + offs_t[None, :]
        tl.store(ob, (a0 * inv[:, None]).to(tl.bfloat16))
        tl.store(ob + TILE, (a1 * inv[:, None]).to(tl.bfloat16))
        tl.store(ob + 2 * TILE, (a2 * inv[:, None]).to(tl.bfloat16))
        tl.store(ob + 3 * TILE, (a3 * inv[:, None]).to(tl.bfloat16))
    else:
        prow = qrow * SPLITS + sp
        pb = part_ptr + prow[:, None] * DL + offs_t[None, :]
        tl.store(pb, a0 * inv[:, None])
        tl.store(pb + TILE, a1 * inv[:, None])
        tl.store(pb + 2 * TILE, a2 * inv[:, None])
        tl.store(pb + 3 * TILE, a3 * inv[:, None])
        tl.store(lse_ptr + prow, m + tl.log2(l))


SM_COUNT = None


def mla_splits(rows: int, heads: int, bh: int, k: int, bn: int) -> int:
    global SM_COUNT
    if SM_COUNT is None:
        SM_COUNT = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    programs = rows * (heads // bh)
    s = 1
    while programs * s < SM_COUNT and s < 8 and k % (2 * s * bn) == 0:
        s *= 2
    return s


def sparse_mla(q_lat, q_pe, pool, ids, scale, out, bh=64, bn=32, num_warps=8, num_stages=1, splits=None):
    """q_lat: [R, H, 512] bf16; q_pe: [R, H, 64] bf16; pool: [N, 656] uint8 entries; ids: [R, k]
    int32 (-1 = padding); out: [R, H, 512] bf16. Returns out."""
    R, H, _ = q_lat.shape
    k = ids.shape[1]
    if splits is None:
        splits = mla_splits(R, H, bh, k, bn)
    entry = pool.shape[1]
    if splits > 1:
        part = torch.empty((R, H, splits, 512), dtype=torch.float32, device=q_lat.device)
        lse = torch.empty((R, H, splits), dtype=torch.float32, device=q_lat.device)
    else:
        part = lse = out
    grid = (R, H // bh, splits)
    _sparse_mla_kernel[grid](q_lat, q_pe, pool, pool.view(torch.float32), pool.view(torch.bfloat16), ids, out, part, lse,
                             scale * 1.4426950408889634, K=k, H=H, BH=bh, BN=bn, SPLITS=splits, ENTRY=entry,
                             num_warps=num_warps, num_stages=num_stages)
    if splits > 1:
        w = torch.exp2(lse - lse.amax(-1, keepdim=True))
        merged = (part * w[..., None]).sum(2) / w.sum(-1)[..., None]
        out.copy_(merged)
    return out
