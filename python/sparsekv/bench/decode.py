"""DeepSeek-V3.2 decode at full size on one GPU: all-in-HBM vs sparsekv, tokens/s per GPU.

    python3 -m sparsekv.bench.decode --context 32768 --mode both           # H100 / H200
    python3 -m sparsekv.bench.decode --config tiny --device cpu --context 512 --batches 2 --steps 2

Builds the per-GPU slice of DeepSeek-V3.2 as ESS deploys it (expert parallelism over 32 GPUs,
attention data-parallel; real dimensions, FP8 weights at their real sizes, random values), then
for each context and KV mode (see sparsekv.bench.engine): works out the largest batch from one
HBM budget (and, for sparsekv, the host RAM that backs the pool), writes the prefill cache
(sparsekv: a prefill process writes every region through the normal write path and releases the
write lease, which the decode process takes), and measures the decode step (61 layers in one
CUDA graph) at a sweep of batches up to that largest one. Prints one JSON line per measurement
(kind "step"), the per-layer trace statistics (kind "trace"), the kernels' roofline fractions
(kind "kernels"), the bitwise check of both modes (kind "check") and per context the ratios the
issue asks for (kind "summary"); progress goes to stderr.

Not modelled (stated in every summary): the all-to-all between GPUs (a second tokens/s figure
adds the published ~0.17 ms per MoE layer for dispatch and the same for combine), expert
imbalance (perfect balance: each local expert gets `batch` rows), random weights, synthetic
top-k drift (calibrated to ESS's measured overlap; see engine.Trace), MTP's own draft layer.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

from . import engine as E
from .model import DEEPSEEK_V32, TINY, ESS_MISSES, ess_overlap_target, kv_plan, weight_bytes

GiB = 1 << 30
A2A_MS_PER_MOE_LAYER = 0.17 * 2  # dispatch + combine, published per-layer figure (ESS)
MTP_ACCEPTED = 1.7


def log(msg: str) -> None:
    print(f"[decode-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(record: dict, out_file=None) -> None:
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if out_file is not None:
        out_file.write(line + "\n")
        out_file.flush()


def parse_size(text: str) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
    for u, m in units.items():
        if text.endswith(u):
            return int(float(text[:-len(u)]) * m)
    return int(text)


def host_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


# ---- the daemon and the prefill process -------------------------------------------------------

class Daemon:
    """sparsekvd on loopback with a memfd pool of the given size, started for this run."""

    def __init__(self, pool_bytes: int, binary: Optional[str] = None):
        here = os.path.dirname(os.path.abspath(__file__))
        candidates = [binary, os.environ.get("SPARSEKVD"), shutil.which("sparsekvd"),
                      os.path.join(here, "..", "..", "..", "build", "server", "sparsekvd")]
        binary = next((c for c in candidates if c and os.path.exists(c)), None)
        if binary is None:
            raise SystemExit("decode bench: no sparsekvd (give --sparsekvd, set $SPARSEKVD or put it on PATH)")
        self.dir = tempfile.mkdtemp(prefix="sparsekv-decode-")
        ready = os.path.join(self.dir, "ready.json")
        self.log = open(os.path.join(self.dir, "sparsekvd.log"), "w")
        self.proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--pool-size", str(pool_bytes),
                                      "--runtime-dir", self.dir, "--ready-file", ready],
                                     stdout=self.log, stderr=self.log)
        deadline = time.time() + 300
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("sparsekvd did not start: " + open(self.log.name).read()[-2000:])
            time.sleep(0.05)
        time.sleep(0.05)
        self.address = f"127.0.0.1:{json.load(open(ready))['port']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def prefill_worker(server: str, prefix: str, requests: int, cfg_name: str, context: int, capacity: int, seed: int,
                   threads: int) -> float:
    """The prefill side (its own process): creates one region per request, writes every
    layer's latent entries through the normal write path, commits, gives the write lease back."""
    import sparsekv
    cfg = {"full": DEEPSEEK_V32, "tiny": TINY}[cfg_name]
    lat_blocks, _ = E.content_blocks(cfg, context, seed)
    client = sparsekv.Client(server=server)
    t0 = time.perf_counter()

    def one(b: int) -> None:
        r = client.create(f"{prefix}-{b}", layers=cfg.layers, entry_bytes=cfg.latent_entry_bytes,
                          capacity_tokens=capacity)
        for layer in range(cfg.layers):
            for first, piece in E.rolled_pieces(lat_blocks[layer % E.CONTENT_GROUPS],
                                                E.content_shift(layer, b, context)):
                r.write(layer, first, piece)
        r.commit(context)
        r.release_write()
        r.close()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for i, _ in enumerate(pool.map(one, range(requests))):
            if (i + 1) % max(1, requests // 8) == 0:
                log(f"prefill: {i + 1}/{requests} regions written")
    client.close()
    return time.perf_counter() - t0


def run_prefill(server: str, prefix: str, requests: int, cfg_name: str, context: int, capacity: int, seed: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        return ex.submit(prefill_worker, server, prefix, requests, cfg_name, context, capacity, seed, 16).result()


# ---- measurement helpers ----------------------------------------------------------------------

def kernel_category(name: str) -> str:
    n = name.lower()
    if "_indexer_kernel" in n:
        return "indexer"
    if "_sparse_mla" in n:
        return "attention"
    if "lookup" in n or "copymisses" in n or "resetslot" in n:
        return "residency"
    if "topk" in n or "radix" in n or "sort" in n or "select" in n:
        return "indexer_topk"
    if any(s in n for s in ("gemm", "sm90", "cutlass", "xmma", "nvjet", "scaled_mm", "cublas", "matmul")):
        return "gemm"
    return "other"


def profile_step(torch, dec) -> Dict[str, float]:
    """GPU kernel time per category of one eager decode step (ms), from the profiler."""
    from torch.profiler import ProfilerActivity, profile
    graph, dec.graph = dec.graph, None  # eager: every kernel is its own profiler event
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec.step()
        torch.cuda.synchronize()
    dec.graph = graph
    cats: Dict[str, float] = {}
    for ev in prof.key_averages():
        us = getattr(ev, "self_device_time_total", None)
        if us is None:
            us = getattr(ev, "self_cuda_time_total", 0.0)
        if us:
            c = kernel_category(ev.key)
            cats[c] = cats.get(c, 0.0) + us / 1e3
    return {k: round(v, 3) for k, v in sorted(cats.items())}


def measure_peaks(torch) -> Dict[str, float]:
    """This card's bf16 tensor-core rate and copy bandwidth, measured here (the rooflines)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    st, en = torch.cuda.Event(True), torch.cuda.Event(True)
    st.record()
    for _ in range(5):
        a @ b
    en.record()
    torch.cuda.synchronize()
    tflops = 5 * 2 * 8192 ** 3 / (st.elapsed_time(en) / 1e3) / 1e12
    del a, b
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    st.record()
    for _ in range(5):
        y.copy_(x)
    en.record()
    torch.cuda.synchronize()
    gbs = 5 * 2 * (1 << 30) / (st.elapsed_time(en) / 1e3) / 1e9
    del x, y
    torch.cuda.empty_cache()
    return {"bf16_tflops": round(tflops, 1), "copy_gb_s": round(gbs, 1)}


def time_cuda(torch, fn, reps: int = 20) -> float:
    fn()
    st, en = torch.cuda.Event(True), torch.cuda.Event(True)
    st.record()
    for _ in range(reps):
        fn()
    en.record()
    torch.cuda.synchronize()
    return st.elapsed_time(en) / reps / 1e3


def kernel_roofline(torch, dec, peaks) -> dict:
    """Indexer and sparse attention on the decoder's real caches, alone: achieved fraction of
    the roofline (bytes over the measured copy bandwidth or FLOPs over the measured bf16 rate,
    whichever binds)."""
    cfg, ops = dec.cfg, dec.ops
    R, k = dec.R, cfg.index_topk
    q8 = torch.randn(R, cfg.index_heads, cfg.index_dim, device="cuda").to(torch.float8_e4m3fn)
    w = torch.rand(R, cfg.index_heads, device="cuda")
    row_len = dec.pos[dec.row_req_long - dec.first_request].to(torch.int32)
    t_idx = time_cuda(torch, lambda: ops.indexer(q8, w, dec.keys, 0, dec.row_req, row_len, dec.logits))
    idx_bytes = float(row_len.sum()) * cfg.index_key_bytes + dec.logits.numel() * 4
    idx_flops = float(row_len.sum()) * cfg.index_heads * cfg.index_dim * 2
    pool = dec.attention_pool
    ids = torch.randint(0, pool.shape[0], (R, k), device="cuda", dtype=torch.int32)
    q_lat = torch.randn(R, cfg.heads, cfg.kv_lora, device="cuda", dtype=torch.bfloat16)
    q_pe = torch.randn(R, cfg.heads, cfg.qk_rope, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q_lat)
    t_att = time_cuda(torch, lambda: ops.attention(q_lat, q_pe, pool, ids, cfg.softmax_scale, out))
    att_flops = R * cfg.heads * k * 2.0 * (cfg.kv_lora + cfg.qk_rope + cfg.kv_lora)
    att_bytes = R * k * cfg.latent_entry_bytes + R * cfg.heads * (cfg.kv_lora * 4 + cfg.qk_rope * 2)
    bw, fl = peaks["copy_gb_s"] * 1e9, peaks["bf16_tflops"] * 1e12

    def frac(t, flops, nbytes, flop_peak):
        bound = "bytes" if nbytes / bw >= flops / flop_peak else "flops"
        return round(max(nbytes / bw, flops / flop_peak) / t, 3), bound

    fi, bi = frac(t_idx, idx_flops, idx_bytes, fl * 2)  # e4m3 tensor cores: twice the bf16 rate
    fa, ba = frac(t_att, att_flops, att_bytes, fl)
    return {"indexer_us": round(t_idx * 1e6, 1), "indexer_gb_s": round(idx_bytes / t_idx / 1e9, 1),
            "indexer_roofline_fraction": fi, "indexer_bound": bi,
            "attention_us": round(t_att * 1e6, 1), "attention_tflops": round(att_flops / t_att / 1e12, 1),
            "attention_roofline_fraction": fa, "attention_bound": ba}


def layer_groups(values: List[float], layers: int) -> Dict[str, float]:
    """Means over ESS's layer groups (layer 0, the early and late layers, the middle)."""
    groups: Dict[str, List[float]] = {}
    for l, v in enumerate(values):
        lo, _, hi = ess_overlap_target(l, layers)
        key = "layer0" if l == 0 else f"ess_{lo:.2f}-{hi:.2f}"
        groups.setdefault(key, []).append(v)
    return {k: round(float(np.mean(v)), 3) for k, v in groups.items()}


# ---- one context --------------------------------------------------------------------------------

class Runner:
    def __init__(self, args, torch, cfg, ops, slice_, peaks, out_file):
        self.a, self.t, self.cfg, self.ops, self.s = args, torch, cfg, ops, slice_
        self.peaks, self.out = peaks, out_file
        self.cuda = ops.device.type == "cuda"
        self.card = torch.cuda.get_device_name() if self.cuda else "cpu"

    def base(self, **kw) -> dict:
        return {"card": self.card, "commit": self.a.commit, "config": self.a.config, **kw}

    def sweep(self, max_batch: int) -> List[int]:
        if self.a.batches != "auto":
            return sorted({min(max_batch, int(b)) for b in self.a.batches.split(",") if int(b) > 0})
        pts = [b for b in (1, 4, 16, 32, 64, 96, 128) if b < max_batch]
        return pts + [max_batch]

    def run_decoder(self, mode, keys, latent, trace, B, context, lengths, q=1, steps=None, record_trace=False,
                    profile=False, check_hashes=None):
        """Builds a Decoder over requests [0, B), warms it, times `steps` steps; returns a record."""
        t, cfg = self.t, self.cfg
        steps = self.a.steps if steps is None else steps
        dec = E.Decoder(self.s, keys, latent, trace, B, context, q=q)
        dec.pos.copy_(t.tensor(lengths[:B], dtype=t.int64))
        need = max(lengths[:B]) + q * (steps + self.a.warmup + 3)
        if need > keys.pages_per_request * keys.page:
            raise RuntimeError(f"requests would grow to {need} tokens, past the {keys.pages_per_request * keys.page} "
                               "allotted (raise --headroom)")
        done = 0
        dec.step()  # eager: records the trace anchors, compiles the kernels
        done += 1
        if self.cuda and not self.a.eager:
            dec.capture()
        for _ in range(self.a.warmup):
            dec.step()
            done += 1
        cache = getattr(latent, "cache", None)
        if cache is not None:
            cache.counters(reset=True)
        times, gpu_times, host_times = [], [], []
        overlaps = []
        prev = dec.topk_log.clone()
        for _ in range(steps):
            if self.cuda:
                t.cuda.synchronize()
            t0 = time.perf_counter()
            latent.pre_step(dec)
            if self.cuda:
                ev0, ev1 = t.cuda.Event(True), t.cuda.Event(True)
                ev0.record()
            dec.run_body()
            if self.cuda:
                ev1.record()
            t1 = time.perf_counter()
            latent.post_step(dec)
            if self.cuda:
                t.cuda.synchronize()
            t2 = time.perf_counter()
            done += 1
            times.append(t2 - t0)
            if self.cuda:
                gpu_times.append(ev0.elapsed_time(ev1) / 1e3)
            host_times.append(t2 - t1)
            if check_hashes is not None:
                check_hashes.append(hashlib.sha256(dec.hidden_out.cpu().contiguous().view(t.uint8).numpy().tobytes())
                                    .hexdigest())
            if record_trace:
                overlaps.append(dec.measured_overlap(prev))
                prev.copy_(dec.topk_log)
        rec = self.base(kind="step", mode=mode, context=context, batch=B, mtp=q > 1, trace=trace.name,
                        step_ms=round(1e3 * float(np.median(times)), 3))
        tokens_per_step = B * (MTP_ACCEPTED if q > 1 else 1)
        rec["tokens_per_s"] = round(tokens_per_step / float(np.median(times)), 1)
        if gpu_times:
            rec["gpu_step_ms"] = round(1e3 * float(np.median(gpu_times)), 3)
        rec["host_after_graph_ms"] = round(1e3 * float(np.median(host_times)), 3)
        a2a = cfg.moe_layers * A2A_MS_PER_MOE_LAYER / 1e3
        rec["tokens_per_s_with_all_to_all"] = round(tokens_per_step / (float(np.median(times)) + a2a), 1)
        trace_rec = None
        if cache is not None:
            c = cache.counters(reset=True)
            per = [v["misses"] / (B * q * steps) for v in c]
            hits = sum(v["hits"] for v in c)
            misses = sum(v["misses"] for v in c)
            rec["hit_rate"] = round(hits / max(1, hits + misses), 4)
            rec["misses_per_request_layer"] = round(float(np.mean(per)), 1)
            rec["misses_per_request_layer_max"] = round(float(np.max(per)), 1)
            rec["miss_bytes_per_step"] = int(misses / steps * cfg.latent_entry_bytes)
            trace_rec = {"misses_per_layer": [round(x, 1) for x in per]}
        if overlaps:
            ov = np.mean(np.array(overlaps), axis=0).tolist()
            rec["overlap_by_group"] = layer_groups(ov, cfg.layers)
            trace_rec = trace_rec or {}
            trace_rec["overlap_per_layer"] = [round(x, 3) for x in ov]
        if profile and self.cuda:
            rec["breakdown_ms"] = profile_step(t, dec)
            rec["breakdown_ms"]["append_host"] = rec["host_after_graph_ms"]
            done += 1
        for b in range(B):
            lengths[b] += q * done
        if trace_rec is not None:
            trace_rec.update(self.base(kind="trace", mode=mode, context=context, batch=B, trace=trace.name,
                                       ess_overlap_targets=[round(ess_overlap_target(l, cfg.layers)[1], 3)
                                                            for l in range(cfg.layers)],
                                       ess_misses_range=list(ESS_MISSES)))
        return rec, trace_rec, dec

    def run_context(self, context: int) -> dict:
        a, t, cfg, ops = self.a, self.t, self.cfg, self.ops
        if context % cfg.page_tokens or context < cfg.index_topk:
            raise SystemExit(f"decode bench: context {context} must be a multiple of {cfg.page_tokens} tokens and at "
                             f"least the top-k {cfg.index_topk}")
        headroom = a.headroom
        tokens = context + headroom
        if self.cuda:
            t.cuda.empty_cache()
            free, total = t.cuda.mem_get_info()
        else:
            free = total = parse_size(a.hbm_budget or "8GiB")
        reserve = parse_size(a.reserve)
        budget = parse_size(a.hbm_budget) if a.hbm_budget else free - reserve
        ws_row = context * 4 * 2 + 8 * (1 << 20)  # indexer logits, split-attention partials, activations
        host_budget = parse_size(a.host_budget) if a.host_budget else host_memory_bytes() - parse_size(a.host_reserve)
        plans = {m: kv_plan(cfg, m, context, headroom, budget, host_budget if m == "sparsekv" else 0,
                            capacity=a.capacity, workspace_per_row=ws_row, rows_per_request=2 if a.mtp else 1)
                 for m in ("hbm", "sparsekv")}
        if a.max_batch:
            for m, p in plans.items():
                if p.max_batch > a.max_batch:
                    plans[m] = dataclasses.replace(p, max_batch=a.max_batch, bound="--max-batch")
        emit(self.base(kind="plan", context=context, hbm_total=total, hbm_free_after_weights=free, reserve=reserve,
                       hbm_budget=budget, host_budget=host_budget, workspace_per_row=ws_row,
                       **{f"{m}_{k}": v for m, p in plans.items() for k, v in
                          (("per_request_hbm", p.hbm_per_request), ("per_request_host", p.host_per_request),
                           ("max_batch", p.max_batch), ("bound", p.bound))}), self.out)
        modes = ["hbm", "sparsekv"] if a.mode == "both" else [a.mode]
        lat_blocks, key_blocks = E.content_blocks(cfg, context, a.seed)
        log(f"context {context}: calibrating the top-k traces")
        betas = E.calibrate_betas(t, cfg, ops, key_blocks[0], log=log)
        results: Dict[str, Dict[int, dict]] = {}
        hashes: Dict[str, List[str]] = {}
        for mode in modes:
            B = plans[mode].max_batch
            if B < 1:
                log(f"{mode}: no request fits the budget at context {context}")
                continue
            results[mode] = {}
            daemon = client = latent = None
            t0 = time.perf_counter()
            keys = E.KeyCache(t, cfg, B, tokens, ops.device)
            keys.fill(key_blocks, range(B), context)
            if mode == "hbm":
                latent = E.HbmLatent(t, cfg, keys, ops.device)
                latent.fill(lat_blocks, range(B), context)
                log(f"hbm: {B} requests' caches in HBM in {time.perf_counter() - t0:.1f} s")
            else:
                import sparsekv
                server = a.server
                if not server:
                    pool = int(plans[mode].host_per_request * B * 1.02) + GiB
                    daemon = Daemon(pool, a.sparsekvd)
                    server = daemon.address
                    log(f"sparsekv: sparsekvd at {server}, pool {pool / GiB:.1f} GiB")
                prefix = f"decode-{context}-{os.getpid()}-{int(time.time())}"
                secs = run_prefill(server, prefix, B, a.config, context, tokens, a.seed)
                log(f"sparsekv: prefill process wrote {B} regions ({B * plans[mode].host_per_request / GiB:.1f} GiB) "
                    f"in {secs:.1f} s")
                client = sparsekv.Client(server=server)
                regions = [client.open_for_write(f"{prefix}-{b}") for b in range(B)]
                t1 = time.perf_counter()
                latent = E.SparsekvLatent(t, cfg, client, regions, ops.device, capacity=a.capacity, max_tokens=tokens)
                log(f"sparsekv: {B} regions bound for device access in {time.perf_counter() - t1:.1f} s")
            lengths = [context] * B
            ess = E.Trace(t, cfg, betas, name="ess")
            try:
                if a.check_steps and B >= 2:
                    hashes[mode] = []
                    self.run_decoder(mode, keys, latent, ess, 2, context, lengths, steps=a.check_steps,
                                     check_hashes=hashes[mode])
                for b in self.sweep(B):
                    rec, tr, dec = self.run_decoder(mode, keys, latent, ess, b, context, lengths,
                                                    record_trace=(b == B), profile=(b == B))
                    if b == B:
                        rec["max_batch"] = True
                        rec["bound"] = plans[mode].bound
                        if self.cuda and not a.no_roofline:
                            emit(self.base(kind="kernels", mode=mode, context=context, batch=b,
                                           peaks=self.peaks, **kernel_roofline(t, dec, self.peaks)), self.out)
                    results[mode][b] = rec
                    emit(rec, self.out)
                    if tr is not None:
                        emit(tr, self.out)
                    log(f"{mode} ctx {context} batch {b}: {rec['step_ms']} ms/step, {rec['tokens_per_s']} tok/s")
                    del dec
                if mode == "sparsekv" and a.traces:
                    base_misses = tr.get("misses_per_layer") if tr else None
                    for name in a.traces.split(","):
                        if name == "ess" or not name:
                            continue
                        if name == "ess2x" and base_misses:
                            extra = [int(round(m)) for m in base_misses]
                        elif name == "gpubench":
                            extra = [int(0.35 * cfg.index_topk)] * cfg.layers
                        else:
                            raise SystemExit(f"unknown trace {name!r}: want ess2x or gpubench")
                        tr_obj = E.Trace(t, cfg, betas, extra=extra, name=name)
                        rec, trr, dec = self.run_decoder(mode, keys, latent, tr_obj, B, context, lengths)
                        rec["max_batch"] = True
                        emit(rec, self.out)
                        if trr:
                            emit(trr, self.out)
                        results[mode][f"trace_{name}"] = rec
                        log(f"{mode} ctx {context} trace {name}: {rec['step_ms']} ms/step, "
                            f"{rec.get('misses_per_request_layer')} misses/request/layer")
                        del dec
                if a.mtp:
                    rec, trr, dec = self.run_decoder(mode, keys, latent, ess, B, context, lengths, q=2)
                    rec["max_batch"] = True
                    emit(rec, self.out)
                    results[mode]["mtp"] = rec
                    log(f"{mode} ctx {context} MTP: {rec['step_ms']} ms/step, {rec['tokens_per_s']} tok/s")
                    del dec
            finally:
                if isinstance(latent, E.SparsekvLatent):
                    latent.close()
                    for r in latent.regions:
                        key = r.key
                        r.close()
                        client.delete(key)
                    client.close()
                if daemon is not None:
                    daemon.stop()
                del latent, keys
                if self.cuda:
                    t.cuda.synchronize()
                    t.cuda.empty_cache()
        summary = self.base(kind="summary", context=context)
        if len(hashes) == 2:
            emit(self.base(kind="check", context=context, batch=2, steps=a.check_steps,
                           bitwise_equal=hashes["hbm"] == hashes["sparsekv"],
                           steps_equal=sum(x == y for x, y in zip(hashes["hbm"], hashes["sparsekv"]))), self.out)
            summary["bitwise_equal"] = hashes["hbm"] == hashes["sparsekv"]
        if "hbm" in results and "sparsekv" in results:
            hb = max(k for k in results["hbm"] if isinstance(k, int))
            sb = max(k for k in results["sparsekv"] if isinstance(k, int))
            h, s = results["hbm"][hb], results["sparsekv"][sb]
            summary.update(hbm_max_batch=hb, sparsekv_max_batch=sb, sparsekv_bound=plans["sparsekv"].bound,
                           tokens_per_s_ratio=round(s["tokens_per_s"] / h["tokens_per_s"], 3),
                           tokens_per_s_ratio_with_all_to_all=round(
                               s["tokens_per_s_with_all_to_all"] / h["tokens_per_s_with_all_to_all"], 3),
                           target_ratio=1.69 if context <= 32768 else 2.23,
                           step_ratio_same_batch={str(b): round(results["sparsekv"][b]["step_ms"] /
                                                                 results["hbm"][b]["step_ms"], 3)
                                                  for b in results["hbm"] if isinstance(b, int) and
                                                  b in results["sparsekv"]})
            if "mtp" in results["hbm"] and "mtp" in results["sparsekv"]:
                summary["mtp_tokens_per_s_ratio"] = round(results["sparsekv"]["mtp"]["tokens_per_s"] /
                                                          results["hbm"]["mtp"]["tokens_per_s"], 3)
            for name in ("ess2x", "gpubench"):
                r = results["sparsekv"].get(f"trace_{name}")
                if r:
                    summary[f"tokens_per_s_ratio_trace_{name}"] = round(r["tokens_per_s"] / h["tokens_per_s"], 3)
        summary["not_modelled"] = ("all-to-all between GPUs (see tokens_per_s_with_all_to_all), expert imbalance, "
                                   "random weights, synthetic top-k drift, MTP's draft layer")
        emit(summary, self.out)
        return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", default="32768", help="comma-separated contexts (tokens), e.g. 32768,131072")
    ap.add_argument("--mode", default="both", choices=["hbm", "sparsekv", "both"])
    ap.add_argument("--batches", default="auto", help="'auto' (a sweep up to each mode's largest batch) or a list")
    ap.add_argument("--max-batch", type=int, default=0, help="cap each mode's largest batch")
    ap.add_argument("--steps", type=int, default=8, help="timed decode steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (they warm the LRU)")
    ap.add_argument("--check-steps", type=int, default=32, help="bitwise check of both modes at batch 2 (0: off)")
    ap.add_argument("--mtp", action="store_true", help="also measure with MTP (2 tokens a step, 1.7 accepted)")
    ap.add_argument("--traces", default="ess", help="also at the largest batch: ess2x (twice the misses), gpubench")
    ap.add_argument("--capacity", type=int, default=6144, help="hot entries per request and layer (sparsekv)")
    ap.add_argument("--headroom", type=int, default=1024, help="decode tokens allotted per request past the context")
    ap.add_argument("--hbm-budget", default="", help="override the KV budget (default: free HBM - --reserve)")
    ap.add_argument("--reserve", default="3GiB", help="HBM kept for the CUDA context, graphs and workspace")
    ap.add_argument("--host-budget", default="", help="override the host bytes the pool may take")
    ap.add_argument("--host-reserve", default="24GiB", help="host RAM kept for the processes (default pool: rest)")
    ap.add_argument("--server", default="", help="a running sparsekvd (default: start one with a fitting pool)")
    ap.add_argument("--sparsekvd", default="", help="the daemon binary to start")
    ap.add_argument("--config", default="full", choices=["full", "tiny"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--eager", action="store_true", help="no CUDA graph")
    ap.add_argument("--no-roofline", action="store_true")
    ap.add_argument("--mla-config", default="64,32,8,1", help="sparse attention: heads/block, entries/iter, warps, stages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit", default=os.environ.get("SPARSEKV_COMMIT", ""))
    ap.add_argument("--out", default="", help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    import torch
    cfg = {"full": DEEPSEEK_V32, "tiny": TINY}[args.config]
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("decode bench: no CUDA device (use --device cpu --config tiny for the CPU check)")
        ops = E.CudaOps(torch, cfg, mla_config=tuple(int(x) for x in args.mla_config.split(",")))
    else:
        ops = E.CpuOps(torch, cfg)
    out = open(args.out, "a") if args.out else None
    peaks = measure_peaks(torch) if args.device == "cuda" and not args.no_roofline else {}
    t0 = time.perf_counter()
    slice_ = E.Slice(torch, cfg, ops, seed=args.seed,
                     progress=lambda i, n: log(f"weights: layer {i}/{n}") if i % 10 == 0 or i == n else None)
    expected = weight_bytes(cfg)
    held = slice_.allocated_bytes()
    if args.device == "cuda":
        torch.cuda.synchronize()
    emit({"kind": "footprint", "card": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
          "commit": args.commit, "config": args.config, "weights_bytes": held, "weights_gib": round(held / GiB, 2),
          "by_group_bytes": expected, "gemm_recipe": ops.recipe, "probe_error": getattr(ops, "probe_error", None),
          "peaks": peaks, "build_s": round(time.perf_counter() - t0, 1)}, out)
    runner = Runner(args, torch, cfg, ops, slice_, peaks, out)
    summaries = [runner.run_context(int(c)) for c in args.context.split(",")]
    if out:
        out.close()
    return summaries


if __name__ == "__main__":
    main()
