#!/usr/bin/env python3
"""The Python demo: a DeepSeek-V3.2-shaped region written from NumPy, handed from a "prefill"
handle to a "decode" handle, top-2048 entries of every layer fetched and checked, a bad index
refused with sparsekv.OutOfRange.

    python3 python/examples/demo.py --server 127.0.0.1:7370
"""
import argparse
import time

import numpy as np

import sparsekv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:7370")
    ap.add_argument("--layers", type=int, default=61)
    ap.add_argument("--tokens", type=int, default=4000)
    args = ap.parse_args()
    entry = 656
    rng = np.random.default_rng(0)
    with sparsekv.Client(server=args.server) as client:
        key = f"py-demo-{int(time.time() * 1000)}"
        prefill = client.create(key, layers=args.layers, entry_bytes=entry, capacity_tokens=args.tokens)
        cache = rng.integers(0, 256, size=(args.layers, args.tokens, entry), dtype=np.uint8)
        t0 = time.perf_counter()
        for layer in range(args.layers):
            prefill.write(layer, 0, cache[layer])
        prefill.commit(args.tokens)
        print(f"prefill: wrote {cache.nbytes / 2**20:.1f} MiB in {1e3 * (time.perf_counter() - t0):.1f} ms "
              f"over {prefill.transport}")
        prefill.release_write()
        decode = client.open_for_write(key)
        step = rng.integers(0, 256, size=(args.layers, 1, entry), dtype=np.uint8)
        decode.append(step, tokens=1)
        cache = np.concatenate([cache, step], axis=1)
        decode.seal()
        reader = client.open(key)
        k = min(2048, reader.committed_tokens)
        t0 = time.perf_counter()
        wrong = 0
        for layer in range(args.layers):
            idx = rng.choice(reader.committed_tokens, size=k, replace=False).astype(np.int32)
            got = reader.fetch(layer, idx)
            wrong += int(np.count_nonzero(np.any(got != cache[layer][idx], axis=1)))
        ms = 1e3 * (time.perf_counter() - t0)
        print(f"decode: fetched top-{k} of {args.layers} layers ({args.layers * k * entry / 2**20:.1f} MiB) in "
              f"{ms:.1f} ms; wrong entries: {wrong}")
        try:
            reader.fetch(0, [reader.committed_tokens])
        except sparsekv.OutOfRange as e:
            print(f"a bad index is refused: OutOfRange: {e}")
        reader.verify()
        print(f"verified; stats: {client.stats()}")
        for h in (reader, decode, prefill):
            h.close()
        client.delete(key)
        if wrong:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
