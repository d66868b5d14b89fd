#!/usr/bin/env python3
"""The Python package's GPU path on a machine with a CUDA device (run by run_on_device.sh):
Region.fetch into a CUDA tensor (indices on the host and on the device) equals the CPU fetch,
an out-of-range index raises OutOfRange, and the decode loop with CUDA tensors and the residency
cache is bitwise equal to the HBM reference. Prints one JSON line per check."""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python", "examples"))
import sparsekv  # noqa: E402
import decode_dsa  # noqa: E402

server = sys.argv[1]
client = sparsekv.Client(server=server)
rng = np.random.default_rng(3)
data = rng.integers(0, 256, size=(3, 5000, 656), dtype=np.uint8)
r = client.create("py-gpu", layers=3, entry_bytes=656, capacity_tokens=5000)
for layer in range(3):
    r.write(layer, 0, data[layer])
r.commit(5000)
idx = rng.integers(0, 5000, size=2048).astype(np.int32)
out = torch.empty((2048, 656), dtype=torch.uint8, device="cuda")
r.fetch(1, idx, out=out)
host_ok = bool(np.array_equal(out.cpu().numpy(), data[1][idx]))
r.fetch(2, torch.tensor(idx, device="cuda"), out=out)
dev_ok = bool(np.array_equal(out.cpu().numpy(), data[2][idx]))
try:
    r.fetch(0, torch.tensor([5000], device="cuda", dtype=torch.int32), out=out)
    error = "no error"
except sparsekv.OutOfRange as e:
    error = f"OutOfRange: {e}"
print(json.dumps({"check": "fetch into CUDA tensors", "card": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "python": sys.version.split()[0], "host_indices_equal": host_ok, "device_indices_equal": dev_ok,
                  "out_of_range": error}))
r.close()
client.delete("py-gpu")
client.close()
report = decode_dsa.main(["--server", server, "--device", "cuda"] + sys.argv[2:])
ok = host_ok and dev_ok and error.startswith("OutOfRange") and report["bitwise_identical"]
sys.exit(0 if ok else 1)
