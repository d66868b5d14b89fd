"""sparsekv.integrations.sglang with the argument shapes SGLang's HiCache uses (SGLang itself
cannot be installed here: its host pool is played by a fake with the same page methods)."""
import pytest

torch = pytest.importorskip("torch")

from sparsekv.integrations.sglang import SparsekvHiCacheStorage  # noqa: E402


class FakeStorageConfig:
    tp_rank, tp_size, pp_rank, pp_size = 0, 1, 0, 1
    is_mla_model = True
    model_name = "deepseek-ai/DeepSeek-V3.2"
    extra_config = None


class FakeMLAHostPool:
    """HiCache's MLA host pool, page_first: [pages][layers][page_size][kv_lora_rank + rope] bf16."""

    def __init__(self, pages=8, layers=3, page_size=64, dim=576):
        self.page_size = page_size
        self.buffer = torch.randn(pages, layers, page_size, dim).to(torch.bfloat16)

    def get_data_page(self, index, flat=True):
        page = self.buffer[int(index) // self.page_size]
        return page.flatten() if flat else page

    def get_dummy_flat_data_page(self):
        return torch.zeros(self.buffer[0].numel(), dtype=self.buffer.dtype)

    def set_from_flat_data_page(self, index, data_page):
        self.buffer[int(index) // self.page_size].copy_(data_page.reshape(self.buffer[0].shape))


@pytest.fixture
def storage(client):
    s = SparsekvHiCacheStorage(FakeStorageConfig(), client=client)
    yield s
    s.clear()


def test_set_get_exists(storage):
    page = torch.randn(3, 64, 576).to(torch.bfloat16)
    assert not storage.exists("k0")
    assert storage.set("k0", page)
    assert storage.set("k0", page)  # content-addressed: again is fine
    assert storage.exists("k0")
    got = storage.get("k0")
    assert got.dtype == torch.bfloat16 and got.shape == page.shape and torch.equal(got, page)
    target = torch.empty_like(page)
    assert storage.get("k0", target_location=target) is target and torch.equal(target, page)
    assert storage.get("missing") is None


def test_batch_set_get_and_prefix_exists(storage):
    pages = [torch.randint(0, 255, (1000 + 37 * i,), dtype=torch.uint8) for i in range(4)]
    keys = [f"h{i}" for i in range(4)]
    assert storage.batch_set(keys, pages)
    got = storage.batch_get(keys + ["nope"])
    assert all(torch.equal(g, p) for g, p in zip(got, pages)) and got[-1] is None
    assert storage.batch_exists(keys) == 4
    assert storage.batch_exists(keys[:2] + ["nope"] + keys[2:]) == 2
    assert any(r["key"].endswith("/h0") for r in storage.client.list(storage.prefix))


def test_zero_copy_v1_against_the_host_pool(storage):
    pool = FakeMLAHostPool()
    storage.register_mem_pool_host(pool)
    keys = ["p-a", "p-b", "p-c"]
    # HiCache passes the host token indices of the pages (page_size per key).
    host_indices = torch.cat([torch.arange(p * 64, (p + 1) * 64) for p in (1, 4, 6)])
    assert storage.batch_set_v1(keys, host_indices) == [True, True, True]
    saved = [pool.buffer[p].clone() for p in (1, 4, 6)]
    pool.buffer.zero_()
    load_to = torch.cat([torch.arange(p * 64, (p + 1) * 64) for p in (0, 2, 3)])
    assert storage.batch_get_v1(keys + ["absent"], torch.cat([load_to, torch.arange(7 * 64, 8 * 64)])) == \
        [True, True, True, False]
    for p, want in zip((0, 2, 3), saved):
        assert torch.equal(pool.buffer[p], want)
    assert storage.pool_stats()["regions"] >= 3


# ---- the v2 interface (DeepSeek-V3.2: the KV pool and DSA's indexer pool), failures, ranks ----

import dataclasses  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from typing import List, Optional  # noqa: E402

import sparsekv  # noqa: E402
from sparsekv.integrations import sglang as skv_sglang  # noqa: E402


@dataclasses.dataclass
class PoolTransfer:  # SGLang's PoolTransfer: the fields its cache controllers fill
    name: str
    host_indices: Optional[torch.Tensor] = None
    device_indices: Optional[torch.Tensor] = None
    keys: Optional[List[str]] = None
    hit_policy: str = "all_pages"


class FakeDsaHostPool(FakeMLAHostPool):
    """A host pool of raw bytes per token and layer: [pages][61 layers][64 tokens][entry] uint8."""

    def __init__(self, pages, entry_bytes, layers=61, page_size=64):
        self.page_size = page_size
        self.buffer = torch.randint(0, 256, (pages, layers, page_size, entry_bytes), dtype=torch.uint8)


def dsa_indices(pages):
    return torch.cat([torch.arange(p * 64, (p + 1) * 64) for p in pages])


def test_v2_stores_and_loads_both_dsa_pools_byte_exact(storage):
    kv, nsa = FakeDsaHostPool(4, 656), FakeDsaHostPool(4, 132)
    storage.register_mem_host_pool_v2(kv, "kv")
    storage.register_mem_host_pool_v2(nsa, "nsa")
    keys = ["d0", "d1", "d2"]
    put = [PoolTransfer("kv", dsa_indices([0, 1, 2]), keys=keys), PoolTransfer("nsa", dsa_indices([0, 1, 2]), keys=keys)]
    assert storage.batch_set_v2(put) == {"kv": [True] * 3, "nsa": [True] * 3}
    want_kv, want_nsa = kv.buffer[:3].clone(), nsa.buffer[:3].clone()
    hit = storage.batch_exists_v2(keys + ["absent"], [PoolTransfer("nsa", keys=keys)])
    assert hit.kv_hit_pages == 3 and hit.extra_pool_hit_pages == {"kv": 3, "nsa": 3}
    kv.buffer.zero_()
    nsa.buffer.zero_()
    got = storage.batch_get_v2([PoolTransfer("kv", dsa_indices([3, 2, 1]), keys=keys),
                                PoolTransfer("nsa", dsa_indices([3, 2, 1]), keys=keys)])
    assert got == {"kv": [True] * 3, "nsa": [True] * 3}
    for slot, page in zip((3, 2, 1), range(3)):
        assert torch.equal(kv.buffer[slot], want_kv[page]) and torch.equal(nsa.buffer[slot], want_nsa[page])
    # A key whose indexer page is gone is no hit for DSA: the usable prefix stops before it.
    storage.client.delete(storage._key("d1", "nsa"))
    hit = storage.batch_exists_v2(keys, [PoolTransfer("nsa", keys=keys)])
    assert hit.kv_hit_pages == 1 and hit.extra_pool_hit_pages == {"kv": 3, "nsa": 1}
    # Wrong index counts are refused per pool, not raised.
    assert storage.batch_get_v2([PoolTransfer("kv", dsa_indices([0]), keys=keys)]) == {"kv": [False] * 3}
    metrics = storage.get_stats()
    assert isinstance(metrics, skv_sglang.StorageMetrics)
    assert metrics.backup_pgs == [3] and metrics.prefetch_pgs[0] == 3 and metrics.prefetch_bandwidth[0] > 0
    assert storage.get_stats().prefetch_pgs == []  # since the last call


class RankedConfig(FakeStorageConfig):
    def __init__(self, pp_rank=0, pp_size=1, cp=None):
        self.pp_rank, self.pp_size = pp_rank, pp_size
        self.extra_config = {"attn_cp_rank": cp[0], "attn_cp_size": cp[1]} if cp else None


def test_pipeline_and_context_parallel_ranks_never_share_a_page(client):
    stores = [SparsekvHiCacheStorage(RankedConfig(pp, 2), client=client) for pp in (0, 1)] + \
        [SparsekvHiCacheStorage(RankedConfig(cp=(cp, 2)), client=client) for cp in (0, 1)]
    assert len({s.prefix for s in stores}) == 4
    try:
        pages = [torch.full((4096,), i, dtype=torch.uint8) for i in range(4)]
        for s, page in zip(stores, pages):
            assert s.set("same-hash", page)
        for s, page in zip(stores, pages):
            assert torch.equal(s.get("same-hash"), page)
    finally:
        for s in stores:
            s.clear()


def test_a_page_of_another_size_is_a_miss(storage):
    storage.register_mem_pool_host(FakeMLAHostPool(pages=2))
    assert storage.batch_set_v1(["sz"], dsa_indices([0])) == [True]
    small = torch.zeros(100, dtype=torch.uint8)
    assert storage.get("sz", target_location=small) is None  # never a partial hit
    other = SparsekvHiCacheStorage(FakeStorageConfig(), client=storage.client)
    other.register_mem_pool_host(FakeMLAHostPool(pages=2, dim=512))  # another layout, same model
    assert other.prefix != storage.prefix
    assert other.batch_get_v1(["sz"], dsa_indices([1])) == [False]
    assert any(k.startswith("get:") for k in storage.failure_counts())


def test_bad_calls_return_failure_values_instead_of_raising(storage):
    assert storage.batch_get_v1(["x"], dsa_indices([0])) == [False]  # no host pool registered yet
    assert storage.set("x", None) is False
    assert storage.batch_get_v2([PoolTransfer("nsa", dsa_indices([0]), keys=["x"])]) == {"nsa": [False]}


def test_a_daemon_killed_mid_batch_gives_false_and_the_next_batch_after_a_restart_works():
    from conftest import Daemon
    daemon = Daemon()
    client = sparsekv.Client(server=daemon.address, rpc_timeout_ms=1500)
    storage = SparsekvHiCacheStorage(FakeStorageConfig(), client=client)
    pool = FakeMLAHostPool(pages=4)
    storage.register_mem_pool_host(pool)
    try:
        assert storage.batch_set_v1(["a", "b"], dsa_indices([0, 1])) == [True, True]
        daemon.proc.send_signal(signal.SIGKILL)  # mid-run: the next batch meets a dead daemon
        daemon.proc.wait()
        t0 = time.time()
        assert storage.batch_set_v1(["c", "d"], dsa_indices([2, 3])) == [False, False]
        assert storage.batch_get_v1(["a", "b"], dsa_indices([2, 3])) == [False, False]
        assert storage.batch_exists(["a"]) == 0 and storage.exists("a") is False and storage.get("a") is None
        assert storage.batch_exists_v2(["a"]).kv_hit_pages == 0
        assert time.time() - t0 < 60
        assert storage.failure_counts()  # logged (once per kind), counted
        daemon.stop()
        daemon = Daemon(port=daemon.port)  # restarted on the same address (an empty pool)
        deadline = time.time() + 20
        while storage.batch_set_v1(["c"], dsa_indices([2])) != [True]:
            assert time.time() < deadline, "no batch succeeded after the restart"
            time.sleep(0.2)
        want = pool.buffer[2].clone()
        pool.buffer.zero_()
        assert storage.batch_get_v1(["c"], dsa_indices([0])) == [True] and torch.equal(pool.buffer[0], want)
    finally:
        client.close()
        daemon.stop()


def test_a_full_region_limit_evicts_the_oldest_pages_instead_of_refusing():
    if not os.environ.get("SPARSEKVD"):
        pytest.skip("SKIPPED: $SPARSEKVD (the daemon to test against) is not set")
    from conftest import Daemon
    d = Daemon(extra_args=("--max-regions", "24"))
    client = sparsekv.Client(server=d.address)
    storage = SparsekvHiCacheStorage(FakeStorageConfig(), client=client)
    try:
        pages = {f"e{i}": torch.full((5000,), i % 251, dtype=torch.uint8) for i in range(40)}
        for k, v in pages.items():
            assert storage.set(k, v), k  # never refused: older pages make room
        assert storage.evicted > 0
        assert len(client.list(storage.base_prefix)) <= 24
        assert torch.equal(storage.get("e39"), pages["e39"])  # the newest pages stay
        assert storage.get("e0") is None  # the oldest went
    finally:
        client.close()
        d.stop()


def test_the_hisparse_host_pool_says_plainly_when_there_is_no_gpu(client):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: tests/gpu/hisparse_driver.py drives the pool on it")
    if not os.environ.get("SPARSEKV_CUDA_LIBRARY"):
        pytest.skip("SKIPPED: the CUDA component was not built")
    if os.environ.get("ASAN_OPTIONS"):
        pytest.skip("SKIPPED: the CUDA runtime is not loaded under AddressSanitizer")
    from sparsekv.integrations.hisparse import SparsekvHiSparseHostPool
    with pytest.raises(sparsekv.FailedPrecondition, match="CUDA device 0 is not present"):
        SparsekvHiSparseHostPool(client, layers=2)
