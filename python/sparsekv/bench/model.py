"""DeepSeek-V3.2's per-GPU decode slice: the model's shapes, what they cost in bytes, and the
parts of the step that need no GPU (the router's group-limited top-8, the HBM accounting that gives
each KV mode its batch, the top-k trace calibration, FP8 codes without a float8 dtype).

Everything here is plain Python / torch on any device, so CI tests it on the CPU; the engine that
runs the step is :mod:`sparsekv.bench.engine`, its GPU kernels :mod:`sparsekv.bench.kernels`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Sequence, Tuple

FP8_MAX = 448.0
QUANT_BLOCK = 128  # DeepSeek's FP8 blocks: 1x128 for activations, 128x128 for weights


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """DeepSeek-V3.2's dimensions (the defaults are the model's config) and how one GPU holds it."""

    layers: int = 61
    dense_layers: int = 3            # layers 0..2 have a dense FFN, the rest MoE
    hidden: int = 7168
    heads: int = 128
    q_lora: int = 1536
    kv_lora: int = 512
    qk_nope: int = 128
    qk_rope: int = 64
    v_head: int = 128
    experts: int = 256
    active_experts: int = 8
    expert_groups: int = 8
    topk_groups: int = 4
    shared_experts: int = 1
    moe_inter: int = 2048
    dense_inter: int = 18432
    index_heads: int = 64
    index_dim: int = 128
    index_topk: int = 2048
    vocab: int = 129280
    route_scale: float = 2.5
    rope_theta: float = 10000.0
    # How the slice is deployed (ESS): expert parallelism over `ep` GPUs, attention data-parallel.
    ep: int = 32
    page_tokens: int = 64            # KV page (SGLang's NSA layout)

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    @property
    def local_experts(self) -> int:
        return self.experts // self.ep

    @property
    def qk_head(self) -> int:
        return self.qk_nope + self.qk_rope

    @property
    def latent_entry_bytes(self) -> int:
        """FlashMLA's FP8 sparse entry: kv_lora e4m3 codes, one fp32 scale per 128, bf16 RoPE."""
        return self.kv_lora + 4 * (self.kv_lora // QUANT_BLOCK) + 2 * self.qk_rope

    @property
    def index_key_bytes(self) -> int:
        """The indexer key: index_dim e4m3 codes and one fp32 scale."""
        return self.index_dim + 4

    @property
    def index_page_bytes(self) -> int:
        """A page of indexer keys: page_tokens x index_dim codes, then page_tokens fp32 scales."""
        return self.page_tokens * self.index_key_bytes

    @property
    def softmax_scale(self) -> float:
        # DeepSeek's YaRN (factor 40, mscale_all_dim 1.0) scales the attention logits by mscale^2.
        mscale = 0.1 * math.log(40.0) + 1.0
        return self.qk_head ** -0.5 * mscale * mscale

    def validate(self) -> None:
        for name in ("hidden", "q_lora", "kv_lora", "moe_inter", "dense_inter", "index_dim"):
            if getattr(self, name) % QUANT_BLOCK:
                raise ValueError(f"{name} = {getattr(self, name)} is not a multiple of the FP8 block {QUANT_BLOCK}")
        if self.experts % self.ep or self.experts % self.expert_groups:
            raise ValueError(f"{self.experts} experts do not split over ep {self.ep} / {self.expert_groups} groups")
        if self.topk_groups > self.expert_groups or self.active_experts > self.topk_groups * (
                self.experts // self.expert_groups):
            raise ValueError("group-limited routing cannot pick that many experts")


DEEPSEEK_V32 = ModelConfig()

# A configuration small enough for CI's CPU (2 layers: one dense, one MoE), same structure.
TINY = ModelConfig(layers=2, dense_layers=1, hidden=256, heads=4, q_lora=128, kv_lora=256, qk_nope=32, qk_rope=64,
                   v_head=32, experts=16, active_experts=4, expert_groups=4, topk_groups=2, moe_inter=128,
                   dense_inter=256, index_heads=4, index_dim=128, index_topk=64, vocab=512, ep=4, page_tokens=64)


# ---- weights --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WeightSpec:
    name: str
    shape: Tuple[int, ...]
    dtype: str          # "fp8" (with 128x128 fp32 block scales), "bf16" or "fp32"
    count: int = 1      # how many layers (or experts x layers) hold one

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def bytes_each(self) -> int:
        if self.dtype == "fp8":
            rows, cols = self.shape[-2], self.shape[-1]
            lead = math.prod(self.shape[:-2])
            blocks = lead * -(-rows // QUANT_BLOCK) * -(-cols // QUANT_BLOCK)
            return self.elements + 4 * blocks
        return self.elements * {"bf16": 2, "fp32": 4}[self.dtype]

    @property
    def bytes(self) -> int:
        return self.bytes_each * self.count


def weight_specs(cfg: ModelConfig) -> List[WeightSpec]:
    """Every weight one GPU holds for the slice (expert parallelism over cfg.ep GPUs: its
    local_experts routed experts and the shared expert of every MoE layer; everything else whole).
    Linear weights are [out, in]. wkv_b is kept in the absorbed form, bf16 (W_UK, W_UV), as
    SGLang and DeepSeek's inference code use it for decode."""
    L, D, M = cfg.layers, cfg.hidden, cfg.moe_layers
    E = cfg.local_experts
    specs = [
        WeightSpec("attn_norm", (D,), "bf16", L), WeightSpec("ffn_norm", (D,), "bf16", L),
        WeightSpec("wq_a", (cfg.q_lora, D), "fp8", L), WeightSpec("q_norm", (cfg.q_lora,), "bf16", L),
        WeightSpec("wq_b", (cfg.heads * cfg.qk_head, cfg.q_lora), "fp8", L),
        WeightSpec("wkv_a", (cfg.kv_lora + cfg.qk_rope, D), "fp8", L), WeightSpec("kv_norm", (cfg.kv_lora,), "bf16", L),
        WeightSpec("w_uk", (cfg.heads, cfg.qk_nope, cfg.kv_lora), "bf16", L),
        WeightSpec("w_uv", (cfg.heads, cfg.kv_lora, cfg.v_head), "bf16", L),
        WeightSpec("wo", (D, cfg.heads * cfg.v_head), "fp8", L),
        WeightSpec("idx_wq_b", (cfg.index_heads * cfg.index_dim, cfg.q_lora), "fp8", L),
        WeightSpec("idx_wk", (cfg.index_dim, D), "fp8", L),
        WeightSpec("idx_k_norm", (2, cfg.index_dim), "fp32", L),  # LayerNorm weight and bias
        WeightSpec("idx_wproj", (cfg.index_heads, D), "fp32", L),
        WeightSpec("dense_w13", (2 * cfg.dense_inter, D), "fp8", cfg.dense_layers),
        WeightSpec("dense_w2", (D, cfg.dense_inter), "fp8", cfg.dense_layers),
        WeightSpec("gate", (cfg.experts, D), "fp32", M), WeightSpec("gate_bias", (cfg.experts,), "fp32", M),
        WeightSpec("expert_w13", (2 * cfg.moe_inter, D), "fp8", M * E),
        WeightSpec("expert_w2", (D, cfg.moe_inter), "fp8", M * E),
        WeightSpec("shared_w13", (2 * cfg.moe_inter * cfg.shared_experts, D), "fp8", M),
        WeightSpec("shared_w2", (D, cfg.moe_inter * cfg.shared_experts), "fp8", M),
        WeightSpec("embed", (cfg.vocab, D), "bf16", 1), WeightSpec("final_norm", (D,), "bf16", 1),
        WeightSpec("lm_head", (cfg.vocab, D), "bf16", 1),
    ]
    return specs


def weight_bytes(cfg: ModelConfig) -> Dict[str, int]:
    """Bytes per group of weights and in all ("total")."""
    groups = {"attention": 0, "indexer": 0, "experts": 0, "dense_ffn": 0, "router": 0, "embed_head": 0, "norms": 0}
    for s in weight_specs(cfg):
        if s.name.startswith(("expert_", "shared_")):
            g = "experts"
        elif s.name.startswith("idx_"):
            g = "indexer"
        elif s.name.startswith("dense_"):
            g = "dense_ffn"
        elif s.name.startswith("gate"):
            g = "router"
        elif s.name in ("embed", "lm_head"):
            g = "embed_head"
        elif s.name.endswith("norm"):
            g = "norms"
        else:
            g = "attention"
        groups[g] += s.bytes
    groups["total"] = sum(groups.values())
    return groups


# ---- the KV cache and the HBM budget ---------------------------------------------------------

def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclasses.dataclass(frozen=True)
class KvPlan:
    mode: str
    context: int
    tokens_per_request: int         # context + decode headroom, in whole pages
    hbm_per_request: int            # bytes of HBM one request takes in this mode
    host_per_request: int           # bytes of host pool (sparsekv) one request takes
    hbm_budget: int
    host_budget: int
    max_batch: int
    bound: str                      # "hbm" or "host_ram": which limit gives max_batch


def kv_plan(cfg: ModelConfig, mode: str, context: int, headroom: int, hbm_budget: int, host_budget: int = 0,
            capacity: int = 6144, workspace_per_row: int = 0, rows_per_request: int = 1,
            map_granule: int = 32768, pool_page_bytes: int = 256 << 10) -> KvPlan:
    """Each mode's largest batch under one HBM budget (the card's memory after weights, the CUDA
    context and the fixed workspace). Per request, HBM holds:
      hbm:      L x T x (latent 656 + indexer key 132)                   (64-token pages)
      sparsekv: L x T x 132 (indexer keys) + L x capacity x 656 (hot buffers) + the residency
                cache's bookkeeping (8 B per hot entry, a 4-byte token map per token, rounded
                up to 32768 tokens, per layer)
    plus workspace_per_row x rows_per_request of activations. sparsekv's batch is also bounded by
    the host pool (per request and layer, T entries padded to 64-byte lines, in whole pool pages)."""
    if mode not in ("hbm", "sparsekv"):
        raise ValueError(f"mode {mode!r}: want 'hbm' or 'sparsekv'")
    L = cfg.layers
    tokens = round_up(context + headroom, cfg.page_tokens)
    keys = L * tokens * cfg.index_key_bytes
    if mode == "hbm":
        per = keys + L * tokens * cfg.latent_entry_bytes
        host = 0
    else:
        per = keys + L * capacity * (cfg.latent_entry_bytes + 8) + L * round_up(tokens, map_granule) * 4
        # The pool pads entries to 64-byte lines and holds whole pages of them per layer.
        stride = round_up(cfg.latent_entry_bytes, 64)
        per_page = pool_page_bytes // stride
        host = L * -(-tokens // per_page) * pool_page_bytes
    per += workspace_per_row * rows_per_request
    by_hbm = max(0, hbm_budget // per)
    bound = "hbm"
    batch = by_hbm
    if mode == "sparsekv" and host_budget > 0:
        by_host = host_budget // host
        if by_host < by_hbm:
            batch, bound = by_host, "host_ram"
    return KvPlan(mode, context, tokens, per, host, hbm_budget, host_budget, int(batch), bound)


# ---- the router -----------------------------------------------------------------------------

def route(torch, logits, bias, cfg: ModelConfig):
    """DeepSeek-V3's noaux_tc routing: sigmoid scores, bias-corrected choice, group-limited (the
    best topk_groups of expert_groups groups, each group scored by its best two experts), top
    active_experts, weights = the chosen (uncorrected) scores normalised, times route_scale.
    logits: [rows, experts] float. Returns (indices int64 [rows, k], weights float [rows, k])."""
    rows = logits.shape[0]
    scores = torch.sigmoid(logits.float())
    choice = scores + bias.float()
    grouped = choice.view(rows, cfg.expert_groups, -1)
    group_scores = grouped.topk(2, dim=-1).values.sum(-1)                       # [rows, groups]
    keep = group_scores.topk(cfg.topk_groups, dim=-1).indices
    mask = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
    choice = grouped.masked_fill(mask.unsqueeze(-1), float("-inf")).view(rows, -1)
    idx = choice.topk(cfg.active_experts, dim=-1).indices
    w = scores.gather(1, idx)
    w = w / w.sum(-1, keepdim=True) * cfg.route_scale
    return idx, w


def route_reference(scores_row: Sequence[float], bias_row: Sequence[float], cfg: ModelConfig):
    """The same routing for one row in plain Python (the test's reference)."""
    s = [1.0 / (1.0 + math.exp(-v)) for v in scores_row]
    c = [a + b for a, b in zip(s, bias_row)]
    per = cfg.experts // cfg.expert_groups
    gscore = []
    for g in range(cfg.expert_groups):
        best = sorted(c[g * per:(g + 1) * per], reverse=True)[:2]
        gscore.append((sum(best), -g))
    groups = {-ng for _, ng in sorted(gscore, reverse=True)[:cfg.topk_groups]}
    cand = sorted(((c[e], -e) for e in range(cfg.experts) if e // per in groups), reverse=True)
    chosen = [-ne for _, ne in cand[:cfg.active_experts]]
    total = sum(s[e] for e in chosen)
    return chosen, [s[e] / total * cfg.route_scale for e in chosen]


# ---- top-k traces like a real model's --------------------------------------------------------

# ESS (arXiv 2512.10576) measured on DeepSeek-V3.2 how much consecutive decode steps' top-k sets
# overlap: about 0 at layer 0, 0.6-0.9 at layers 1-16 and 45-60, 0.3-0.5 at layers 18-43; after
# warm-up 10-250 misses per request and layer (peaks 425-605) with an LRU of >= 6.4K entries.
ESS_OVERLAP_RANGES = ((0, 0, (0.0, 0.0)), (1, 16, (0.6, 0.9)), (17, 17, (0.45, 0.7)), (18, 43, (0.3, 0.5)),
                      (44, 44, (0.45, 0.7)), (45, 60, (0.6, 0.9)))
ESS_MISSES = (10, 250)


def ess_overlap_target(layer: int, layers: int) -> Tuple[float, float, float]:
    """(low, target, high) consecutive-step top-k overlap ESS measured at this depth (layers of a
    smaller model are mapped onto the 61 by relative depth). The target is the range's middle."""
    depth = 0 if layers <= 1 else round(layer * 60 / (layers - 1))
    if layer == 0:
        depth = 0
    elif depth == 0:
        depth = 1
    for lo, hi, (a, b) in ESS_OVERLAP_RANGES:
        if lo <= depth <= hi:
            return a, (a + b) / 2, b
    raise AssertionError(depth)


def calibrate_mix(overlap_at: Callable[[float], float], target: float, iters: int = 12) -> float:
    """The query mix beta in [0, 1] whose consecutive-step overlap is `target`: the step's
    indexer query (and head weights) are (1 - beta) x a per-request anchor + beta x what the model
    computed, so beta = 1 is the random model's own drift (overlap ~ 0) and beta = 0 repeats the
    anchor (overlap 1). overlap_at(beta) must fall as beta grows; bisection."""
    if target <= 0.0:
        return 1.0
    if target >= 1.0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if overlap_at(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def topk_overlap(torch, a, b) -> float:
    """Mean over rows of |a_r & b_r| / k for two [rows, k] index tensors."""
    k = a.shape[-1]
    total = 0.0
    for r in range(a.shape[0]):
        sa = torch.unique(a[r])
        sb = torch.unique(b[r])
        inter = sa.numel() + sb.numel() - torch.unique(torch.cat([sa, sb])).numel()
        total += inter / k
    return total / a.shape[0]


# ---- FP8 e4m3 without a float8 dtype (CPU torch of Debian 12) ---------------------------------

def fp8_table(torch, device="cpu"):
    """float32 value of every e4m3fn code (1 sign, 4 exponent bits of bias 7, 3 mantissa bits)."""
    vals = []
    for b in range(256):
        s, e, m = b >> 7, (b >> 3) & 0xF, b & 7
        if e == 0xF and m == 7:
            v = float("nan")
        elif e == 0:
            v = m / 8.0 * 2.0 ** -6
        else:
            v = (1 + m / 8.0) * 2.0 ** (e - 7)
        vals.append(-v if s else v)
    return torch.tensor(vals, dtype=torch.float32, device=device)


class Fp8Codec:
    """e4m3 codes from floats (nearest, ties to the smaller magnitude) and back, by table."""

    def __init__(self, torch, device="cpu"):
        self.t = torch
        self.table = fp8_table(torch, device)
        pos = self.table[:127]
        order = torch.argsort(pos)
        self.pos_codes = order.to(torch.uint8)
        self.pos_values = pos[order].contiguous()

    def encode(self, x):
        t = self.t
        mag = x.abs().clamp(max=FP8_MAX).contiguous()
        hi = t.searchsorted(self.pos_values, mag).clamp(1, self.pos_values.numel() - 1)
        lo = hi - 1
        pick = t.where(self.pos_values[hi] - mag < mag - self.pos_values[lo], hi, lo)
        code = self.pos_codes[pick]
        return t.where(x < 0, code | 0x80, code)

    def decode(self, codes):
        return self.table[codes.long()]
