"""The Python package against the real daemon: every call, byte-exact fetches into NumPy arrays,
buffers and torch CPU tensors, every error class, the GIL released during a long fetch."""
import threading
import time

import numpy as np
import pytest

import sparsekv


def pattern(layers, tokens, entry_bytes, salt):
    """[layer][token][entry] bytes that differ per (layer, token, byte)."""
    l = np.arange(layers, dtype=np.uint32).reshape(-1, 1, 1)
    t = np.arange(tokens, dtype=np.uint32).reshape(1, -1, 1)
    b = np.arange(entry_bytes, dtype=np.uint32).reshape(1, 1, -1)
    return ((l * 131 + t * 7 + b * 3 + salt * 17) % 251).astype(np.uint8)


def test_version_and_help():
    assert sparsekv.version()
    assert "fetch" in sparsekv.Client.__doc__ or "server" in sparsekv.Client.__doc__
    assert "write lease" in sparsekv.Client.open_for_write.__doc__


def test_create_write_commit_seal_fetch_verify(client):
    data = pattern(3, 500, 656, 1)
    r = client.create("py-a", layers=3, entry_bytes=656, capacity_tokens=500)
    assert r.writable and not r.sealed and r.layers == 3 and r.entry_bytes == 656
    for layer in range(3):
        r.write(layer, 0, data[layer])
    r.commit(500)
    r.seal()
    assert r.sealed and r.committed_tokens == 500 and not r.writable
    r.verify()
    reader = client.open("py-a")
    assert not reader.writable
    idx = np.array([499, 0, 17, 17, 256, 373, 372], dtype=np.int32)
    got = reader.fetch(2, idx)
    assert got.shape == (len(idx), 656) and got.dtype == np.uint8
    assert np.array_equal(got, data[2][idx])
    # Into a preallocated array, a bytearray and a memoryview.
    out = np.zeros((len(idx), 656), dtype=np.uint8)
    assert reader.fetch(1, idx.tolist(), out=out) is out
    assert np.array_equal(out, data[1][idx])
    buf = bytearray(len(idx) * 656)
    reader.fetch(0, idx, out=buf)
    assert bytes(buf) == data[0][idx].tobytes()
    assert reader.transport == "shm"
    assert any(c.startswith("shm") for c in client.transport_choices())


def test_append_and_handoff(client):
    r = client.create("py-b", layers=2, entry_bytes=64, capacity_tokens=0)
    step = pattern(2, 1, 64, 9)
    r.append(step, tokens=1)
    assert r.committed_tokens == 1
    with pytest.raises(sparsekv.FailedPrecondition, match="held for writing"):
        client.open_for_write("py-b")
    r.release_write()
    with pytest.raises(sparsekv.FailedPrecondition, match="read-only"):
        r.append(step, tokens=1)
    w = client.open_for_write("py-b")
    w.reserve(1000)
    w.append(step, tokens=1)
    assert w.committed_tokens == 2
    w.seal()
    assert client.open("py-b").committed_tokens == 2


def test_torch_cpu_tensors(client):
    torch = pytest.importorskip("torch")
    data = pattern(2, 300, 656, 4)
    r = client.create("py-torch", layers=2, entry_bytes=656, capacity_tokens=300)
    for layer in range(2):
        r.write(layer, 0, torch.from_numpy(data[layer].copy()))
    r.commit(300)
    idx = torch.tensor([5, 299, 0, 150], dtype=torch.int64)
    out = torch.empty((4, 656), dtype=torch.uint8)
    r.fetch(1, idx, out=out)
    assert torch.equal(out, torch.from_numpy(data[1][idx.numpy()]))


def test_fetch_batch_list_stats_delete(client):
    data = pattern(1, 100, 128, 5)
    a = client.create("py-batch-a", layers=1, entry_bytes=128, capacity_tokens=100)
    a.write(0, 0, data[0])
    a.commit(100)
    b = client.create("py-batch-b", layers=1, entry_bytes=128, capacity_tokens=100)
    b.write(0, 0, data[0][::-1].copy())
    b.commit(100)
    oa = np.empty((3, 128), np.uint8)
    ob = np.empty((2, 128), np.uint8)
    client.fetch_batch([(a, 0, [1, 2, 3], oa), (b, 0, [0, 99], ob)])
    assert np.array_equal(oa, data[0][[1, 2, 3]])
    assert np.array_equal(ob, data[0][::-1][[0, 99]])
    keys = [r["key"] for r in client.list("py-batch-")]
    assert keys == ["py-batch-a", "py-batch-b"]
    stats = client.stats()
    assert stats["pool_bytes"] > 0 and stats["regions"] >= 2
    client.delete("py-batch-b")
    assert [r["key"] for r in client.list("py-batch-")] == ["py-batch-a"]


def test_every_error_class(client, daemon):
    r = client.create("py-err", layers=1, entry_bytes=64, capacity_tokens=10)
    with pytest.raises(sparsekv.AlreadyExists, match="already exists"):
        client.create("py-err", layers=1, entry_bytes=64)
    with pytest.raises(sparsekv.NotFound, match="does not exist"):
        client.open("py-nope")
    with pytest.raises(sparsekv.InvalidArgument, match="layers"):
        client.create("py-bad", layers=0, entry_bytes=64)
    with pytest.raises(sparsekv.OutOfRange):
        r.write(0, 2**63 - 1, np.zeros(64, np.uint8))
    with pytest.raises(sparsekv.OutOfRange, match="committed"):
        r.fetch(0, [0])
    with pytest.raises(sparsekv.InvalidArgument, match="destination"):
        r.commit(10)
        r.fetch(0, [0, 1], out=np.zeros(64, np.uint8))
    with pytest.raises(sparsekv.ResourceExhausted):
        client.create("py-huge", layers=1, entry_bytes=65536, capacity_tokens=4000)
    with pytest.raises(sparsekv.FailedPrecondition, match="commit"):
        r.seal()
        r.commit(10)
    with pytest.raises(sparsekv.Unavailable):
        sparsekv.Client(server="127.0.0.1:1", rpc_timeout_ms=200)
    with pytest.raises(sparsekv.InvalidArgument, match="read-only"):
        r.fetch(0, [0], out=bytes(64))
    assert issubclass(sparsekv.NotFound, KeyError) and issubclass(sparsekv.OutOfRange, IndexError)
    assert sparsekv.OutOfRange.code == 11


def test_the_gil_is_released_during_a_long_fetch(client):
    tokens, entry = 20000, 656
    r = client.create("py-gil", layers=1, entry_bytes=entry, capacity_tokens=tokens)
    r.write(0, 0, np.ones((tokens, entry), np.uint8))
    r.commit(tokens)
    idx = np.random.default_rng(1).integers(0, tokens, size=2_000_000, dtype=np.int32)
    out = np.empty((len(idx), entry), np.uint8)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.01)
    before = len(ticks)
    started = time.perf_counter()
    r.fetch(0, idx, out=out)
    elapsed = time.perf_counter() - started
    during = len(ticks) - before
    done.set()
    t.join()
    assert elapsed > 0.05, "the fetch was too short to tell"
    # With the GIL held for the whole fetch the ticker could not run at all.
    assert during >= 5, f"{during} ticks in {elapsed:.3f} s"
