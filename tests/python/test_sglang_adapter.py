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
    assert storage.get_stats()["regions"] >= 3
