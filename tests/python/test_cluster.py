"""sparsekv.Client(cluster=...) against a real etcd-server and two real sparsekvd members."""
import time

import numpy as np
import pytest

import sparsekv
from conftest import Daemon, Etcd


@pytest.fixture(scope="module")
def cluster():
    etcd = Etcd()
    url = f"etcd://{etcd.endpoint}/py"
    nodes = [Daemon(extra_args=["--cluster", url, "--cluster-node-id", f"p{i}", "--cluster-ttl-s", "3",
                                "--cluster-refresh-ms", "300"]) for i in range(2)]
    deadline = time.time() + 30
    while True:
        c = sparsekv.Client(cluster=url)
        stats = c.stats()
        c.close()
        if stats["nodes"] == 2:
            break
        assert time.time() < deadline, "the two nodes did not register"
        time.sleep(0.1)
    yield url
    for n in nodes:
        n.stop()
    etcd.stop()


def test_regions_spread_over_nodes_and_one_batch_spans_them(cluster):
    c = sparsekv.Client(cluster=cluster)
    rng = np.random.default_rng(5)
    data = {}
    for i in range(16):
        r = c.create(f"py/{i}", layers=2, entry_bytes=656, capacity_tokens=128)
        entries = rng.integers(0, 255, size=(2, 128, 656), dtype=np.uint8)
        for layer in range(2):
            r.write(layer, 0, entries[layer])
        r.commit(128)
        r.seal()
        data[f"py/{i}"] = entries
    listed = c.list("py/")
    assert {tuple(r["nodes"]) for r in listed} == {("p0",), ("p1",)}  # both nodes hold some
    reader = sparsekv.Client(cluster=cluster)
    regions = {k: reader.open(k) for k in data}
    idx = rng.integers(0, 128, size=64).astype(np.int32)
    keys = [(k, layer) for k in data for layer in range(2)]
    outs = [np.zeros((64, 656), dtype=np.uint8) for _ in keys]
    reader.fetch_batch([(regions[k], layer, idx, out) for (k, layer), out in zip(keys, outs)])
    for (k, layer), got in zip(keys, outs):
        assert np.array_equal(got, data[k][layer][idx])
    assert reader.stats()["nodes"] == 2
    assert len(reader.transport_choices()) == 2  # one connection per node
    with pytest.raises(sparsekv.AlreadyExists):
        c.create("py/0", layers=2, entry_bytes=656, capacity_tokens=128)
    with pytest.raises(sparsekv.NotFound):
        reader.open("py/none")
