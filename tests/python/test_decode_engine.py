"""The decode engine's CPU parts (sparsekv.bench): DeepSeek-V3.2's shapes and byte sizes, the HBM
accounting that gives each KV mode its batch, the trace calibration, the router against a plain
reference, and the tiny configuration through the real daemon in both modes, bitwise equal."""
import json
import math
import os
import random
import shutil
import subprocess

import pytest

torch = pytest.importorskip("torch")

from sparsekv.bench import decode, engine  # noqa: E402
from sparsekv.bench.model import (DEEPSEEK_V32, TINY, Fp8Codec, calibrate_mix, ess_overlap_target, kv_plan,  # noqa: E402
                                  route, route_reference, weight_bytes, weight_specs)

GiB = 1 << 30
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def test_cache_entries_have_the_model_sizes():
    c = DEEPSEEK_V32
    assert c.latent_entry_bytes == 656  # 512 e4m3 + 4 fp32 scales + 64 bf16 RoPE (FlashMLA's FP8 layout)
    assert c.index_key_bytes == 132     # 128 e4m3 + 1 fp32 scale
    assert c.index_page_bytes == 64 * 132
    assert c.local_experts == 8 and c.moe_layers == 58 and c.qk_head == 192
    c.validate()


def test_weight_shapes_and_footprint_follow_the_config():
    specs = {s.name: s for s in weight_specs(DEEPSEEK_V32)}
    assert specs["wq_b"].shape == (128 * 192, 1536)
    assert specs["wkv_a"].shape == (512 + 64, 7168)
    assert specs["wo"].shape == (7168, 128 * 128)
    assert specs["idx_wq_b"].shape == (64 * 128, 1536) and specs["idx_wk"].shape == (128, 7168)
    assert specs["expert_w13"].shape == (2 * 2048, 7168) and specs["expert_w13"].count == 58 * 8
    assert specs["dense_w13"].shape == (2 * 18432, 7168) and specs["dense_w13"].count == 3
    assert specs["lm_head"].shape == (129280, 7168)
    # An FP8 weight is one byte an element plus one fp32 scale per 128x128 block (rounded up).
    assert specs["wkv_a"].bytes_each == 576 * 7168 + 4 * 5 * 56
    total = weight_bytes(DEEPSEEK_V32)["total"]
    assert 36 * GiB < total < 42 * GiB, total / GiB  # "about 40 GB" per GPU
    assert weight_bytes(DEEPSEEK_V32)["experts"] > weight_bytes(DEEPSEEK_V32)["attention"]


def test_hbm_accounting_gives_each_mode_its_batch():
    c = DEEPSEEK_V32
    T, head = 32768, 1024
    tokens = T + head
    hbm = kv_plan(c, "hbm", T, head, hbm_budget=36 * GiB)
    assert hbm.tokens_per_request == tokens
    assert hbm.hbm_per_request == 61 * tokens * (656 + 132)
    assert hbm.max_batch == 36 * GiB // hbm.hbm_per_request
    skv = kv_plan(c, "sparsekv", T, head, hbm_budget=36 * GiB, host_budget=0)
    assert skv.hbm_per_request == 61 * tokens * 132 + 61 * 6144 * (656 + 8) + 61 * 65536 * 4
    per_page = (256 << 10) // 704  # 656-byte entries padded to 704 in 256 KiB pool pages
    assert skv.host_per_request == 61 * -(-tokens // per_page) * (256 << 10)
    assert skv.bound == "hbm"
    # ESS's setting: about 20 requests in HBM vs about 65 with the latent cache offloaded.
    assert 18 <= hbm.max_batch <= 26 and 60 <= skv.max_batch <= 80
    # The host pool binds when it is the smaller limit (the 128K case on a 128 GiB host).
    long = kv_plan(c, "sparsekv", 131072, head, hbm_budget=36 * GiB, host_budget=104 * GiB)
    assert long.bound == "host_ram" and long.max_batch == 104 * GiB // long.host_per_request
    # Workspace per row counts against the budget.
    tight = kv_plan(c, "hbm", T, head, hbm_budget=36 * GiB, workspace_per_row=1 << 30)
    assert tight.max_batch < hbm.max_batch
    with pytest.raises(ValueError, match="mode"):
        kv_plan(c, "gpu", T, head, hbm_budget=GiB)


def test_router_matches_a_plain_reference():
    rng = random.Random(7)
    for cfg in (TINY, DEEPSEEK_V32):
        rows = 6
        logits = torch.tensor([[rng.gauss(0, 1) for _ in range(cfg.experts)] for _ in range(rows)])
        bias = torch.tensor([rng.gauss(0, 0.05) for _ in range(cfg.experts)])
        idx, w = route(torch, logits, bias, cfg)
        for r in range(rows):
            ref_idx, ref_w = route_reference(logits[r].tolist(), bias.tolist(), cfg)
            got = dict(zip(idx[r].tolist(), w[r].tolist()))
            assert sorted(got) == sorted(ref_idx)
            for e, v in zip(ref_idx, ref_w):
                assert math.isclose(got[e], v, rel_tol=1e-5)
            # group-limited: the chosen experts lie in at most topk_groups groups
            per = cfg.experts // cfg.expert_groups
            assert len({e // per for e in ref_idx}) <= cfg.topk_groups
            assert math.isclose(sum(ref_w), cfg.route_scale, rel_tol=1e-6)


def test_trace_targets_and_calibration():
    assert ess_overlap_target(0, 61)[1] == 0.0
    assert ess_overlap_target(5, 61)[1] == pytest.approx(0.75)
    assert ess_overlap_target(30, 61)[1] == pytest.approx(0.4)
    assert ess_overlap_target(55, 61)[1] == pytest.approx(0.75)
    assert ess_overlap_target(1, 2)[1] == pytest.approx(0.75)  # a 2-layer model maps its last layer to 60
    # bisection on a monotone stand-in
    beta = calibrate_mix(lambda b: 1.0 - b * b, 0.36)
    assert beta == pytest.approx(0.8, abs=1e-3)
    assert calibrate_mix(lambda b: 1.0 - b, 0.0) == 1.0
    # on real (tiny) keys: the calibrated mix gives the target overlap between two fresh draws
    ops = engine.CpuOps(torch, TINY)
    _, keys = engine.content_blocks(TINY, 2048, seed=3)
    logs = []
    betas = engine.calibrate_betas(torch, TINY, ops, keys[0], samples=4, log=logs.append)
    assert betas[0] == 1.0 and 0.0 < betas[1] < 1.0
    assert any("check: 0.7" in line or "check: 0.8" in line for line in logs), logs


def test_fp8_codec_round_trips_every_finite_code():
    codec = Fp8Codec(torch)
    codes = torch.tensor([c for c in range(256) if c not in (0x7F, 0xFF)], dtype=torch.uint8)
    values = codec.decode(codes)
    back = codec.encode(values)
    assert torch.equal(codec.decode(back), values)  # +0 and -0 may swap codes, not values
    assert float(codec.decode(codec.encode(torch.tensor([1000.0])))[0]) == 448.0


def test_content_roll_matches_numpy():
    import numpy as np
    block = np.arange(40, dtype=np.uint8).reshape(10, 4)
    for shift in (0, 3, 9):
        out = np.empty_like(block)
        for first, piece in engine.rolled_pieces(block, shift):
            out[first:first + piece.shape[0]] = piece
        assert (out == np.roll(block, shift, 0)).all()


def test_tiny_decode_both_modes_bitwise_equal_through_the_daemon(daemon, tmp_path, capsys):
    out = tmp_path / "decode.jsonl"
    summaries = decode.main(["--config", "tiny", "--device", "cpu", "--context", "512", "--batches", "1,3",
                             "--steps", "2", "--warmup", "1", "--check-steps", "4", "--hbm-budget", "64MiB",
                             "--host-budget", "64MiB", "--headroom", "256", "--server", daemon.address,
                             "--out", str(out)])
    s = summaries[0]
    assert s["bitwise_equal"] is True
    records = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert {"footprint", "plan", "step", "check", "summary"} <= kinds
    steps = [r for r in records if r["kind"] == "step"]
    assert {r["mode"] for r in steps} == {"hbm", "sparsekv"}
    for r in steps:
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["card"] == "cpu" and r["mtp"] is False
    check = next(r for r in records if r["kind"] == "check")
    assert check["steps_equal"] == 4
    # The plot of tokens/s against batch comes from these lines.
    if shutil.which("gnuplot"):
        png = tmp_path / "decode.png"
        subprocess.run([os.path.join(REPO, "bench", "plot_decode.sh"), str(out), str(png)], check=True)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The bench deletes the regions its prefill process wrote (and it appended to) when done.
    import sparsekv
    c = sparsekv.Client(server=daemon.address)
    assert not [r for r in c.list("decode-")]
    c.close()


def test_a_bad_context_is_refused(daemon):
    with pytest.raises(SystemExit, match="multiple of 64"):
        decode.main(["--config", "tiny", "--device", "cpu", "--context", "500", "--server", daemon.address,
                     "--hbm-budget", "64MiB", "--host-budget", "64MiB"])
