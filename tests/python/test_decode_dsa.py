"""The DeepSeek-V3.2-shaped decode loop on CPU at a small size: sparsekv's fetched bytes give
attention outputs bitwise identical to the in-memory reference cache."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python", "examples"))


def test_fp8_and_bf16_encoding_round_trip():
    np = pytest.importorskip("numpy")
    import decode_dsa as d
    x = np.array([0.0, 1.0, -1.0, 0.5, 448.0, -448.0, 3.3, 1e-3], np.float32)
    back = d.FP8[d.fp8_encode(x)]
    assert np.all(np.abs(back - x) <= np.abs(x) / 8 + 2 ** -9)
    assert back[4] == 448.0 and back[5] == -448.0
    assert d.ENTRY == 656 and d.IDX_ENTRY == 132


def test_decode_loop_cpu_matches_reference(daemon):
    pytest.importorskip("torch")
    import decode_dsa as d
    report = d.main(["--server", daemon.address, "--layers", "2", "--heads", "4", "--context", "2500", "--batch", "2",
                     "--steps", "2", "--topk", "2048"])
    assert report["bitwise_identical"], report
    assert report["max_abs_diff"] == 0.0
    assert report["outputs_compared"] == 2 * 2 * 2
    assert report["k"] == 2048
