"""pytest fixtures: the real sparsekvd on loopback (the binary from $SPARSEKVD), and the package
and library from the build tree ($SPARSEKV_LIBRARY; tests/run sets both through ctest)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))


class Daemon:
    def __init__(self, pool_size="64MiB", lease_ms=10000, extra_args=(), port=0):
        binary = os.environ.get("SPARSEKVD")
        if not binary:
            pytest.skip("SKIPPED: $SPARSEKVD (the daemon to test against) is not set")
        self.dir = tempfile.mkdtemp(prefix="sparsekv-py-")
        ready = os.path.join(self.dir, "ready.json")
        self.log = open(os.path.join(self.dir, "sparsekvd.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{port}", "--pool-size", pool_size, "--runtime-dir", self.dir,
             "--ready-file", ready, "--metrics-listen", "127.0.0.1:0", "--lease-ms", str(lease_ms),
             "--reap-interval-ms", str(min(100, lease_ms // 4)), *extra_args],
            stderr=self.log, stdout=self.log)
        deadline = time.time() + 60
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("sparsekvd did not start: " + open(self.log.name).read())
            time.sleep(0.01)
        time.sleep(0.01)
        self.port = json.load(open(ready))["port"]
        self.address = f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """A real etcd-server (Debian's /usr/bin/etcd) on loopback ports of its own."""

    def __init__(self):
        if not os.path.exists("/usr/bin/etcd"):
            pytest.skip("SKIPPED: etcd-server is not installed (/usr/bin/etcd)")
        self.dir = tempfile.mkdtemp(prefix="sparsekv-etcd-")
        client, peer = _free_port(), _free_port()
        self.endpoint = f"127.0.0.1:{client}"
        self.log = open(os.path.join(self.dir, "etcd.log"), "w")
        self.proc = subprocess.Popen(
            ["/usr/bin/etcd", "--name", "py", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", f"http://{self.endpoint}", "--advertise-client-urls", f"http://{self.endpoint}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
             f"http://127.0.0.1:{peer}", "--initial-cluster", f"py=http://127.0.0.1:{peer}"],
            stderr=self.log, stdout=self.log)
        deadline = time.time() + 30
        while "ready to serve client requests" not in open(self.log.name).read():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("etcd did not start: " + open(self.log.name).read())
            time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def daemon():
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def client(daemon):
    import sparsekv
    c = sparsekv.Client(server=daemon.address)
    yield c
    c.close()
