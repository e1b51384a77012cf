#!/usr/bin/env python3
"""Echo of large ``bytes`` through a pool, at several sizes, against the peers.

    .venv/bin/python bench/bigecho.py                       # 1, 16, 256 MiB; hangfree, cf, loky
    .venv/bin/python bench/bigecho.py --size 16 --impl hangfree.Pool --repeats 5

Like ``run.py``'s "1 MiB echo" row: ``calls`` echoes are submitted at once, then
collected; MB/s counts bytes in plus bytes out (MB = 10^6 bytes). Every measurement is a
fresh interpreter (``--child``); implementations alternate within each repeat. The
median of the repeats is printed, with the load average before the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MiB = 1 << 20
# Calls per measurement by size: about 64 MiB to 1 GiB each way.
CALLS = {1: 64, 16: 16, 256: 4}


def child(impl: str, size_mib: int, calls: int, workers: int) -> dict:
    import measure
    import tasks

    measure.import_impl(impl)
    data = os.urandom(size_mib * MiB)
    a = measure.IMPLS[impl](workers)
    measure.warm(a, workers)
    assert a.result(a.submit(tasks.echo, data)) == data
    t0 = time.perf_counter()
    hs = [a.submit(tasks.echo, data) for _ in range(calls)]
    outs = [a.result(h) for h in hs]
    dt = time.perf_counter() - t0
    assert all(o == data for o in outs), "wrong echo"
    a.close_join()
    return {"mb_per_s": 2 * calls * len(data) / dt / 1e6, "ms_per_call": dt * 1000 / calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, action="append", help="MiB per call (repeatable; default 1, 16, 256)")
    ap.add_argument("--impl", action="append", help="implementations (default hangfree.Pool, "
                    "hangfree.ProcessPoolExecutor, cf.ProcessPoolExecutor, loky)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--calls", type=int, default=None, help="calls per measurement (default by size)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = args.size or [1, 16, 256]
    impls = args.impl or ["hangfree.Pool", "hangfree.ProcessPoolExecutor", "cf.ProcessPoolExecutor", "loky"]
    if args.child:
        size = sizes[0]
        print(json.dumps(child(impls[0], size, args.calls or CALLS.get(size, 8), args.workers)))
        sys.stdout.flush()
        os._exit(0)
    print(f"load average before: {os.getloadavg()}")
    for size in sizes:
        got: dict = {i: [] for i in impls}
        for r in range(args.repeats):
            for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
                cmd = [sys.executable, __file__, "--child", "--impl", impl, "--size", str(size),
                       "--workers", str(args.workers)]
                if args.calls:
                    cmd += ["--calls", str(args.calls)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if out.returncode != 0 or not out.stdout.strip():
                    print(f"{impl} {size} MiB failed: {out.stderr[-2000:]}", file=sys.stderr)
                    continue
                got[impl].append(json.loads(out.stdout.strip().splitlines()[-1])["mb_per_s"])
        best_peer = max((statistics.median(v) for i, v in got.items() if v and not i.startswith("hangfree")),
                        default=None)
        for impl, v in got.items():
            if not v:
                continue
            m = statistics.median(v)
            ratio = f"  {m / best_peer:4.2f}x best peer" if best_peer else ""
            print(f"{size:4d} MiB  {impl:30s} {m:8.0f} MB/s  (runs: {', '.join(f'{x:.0f}' for x in v)}){ratio}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
