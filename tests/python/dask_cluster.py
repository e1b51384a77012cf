"""Run by test_dask.py as a script of its own (so that Dask's processes, its nanny's
resource tracker included, end with it): 200 tasks with 5 segfaults and 3 hangs on a
LocalCluster of 2 worker processes, routed to the hangfree executor, then the same
tasks but the hangs in Dask's own executor. Prints one JSON line of what happened."""

from __future__ import annotations

import json
import logging
import os
import sys

import dask
from distributed import Client, LocalCluster, wait

import dask_tasks as dt
from hangfree.dask import HangfreeExecutor

N = 200


def outcomes(futures):
    values, kinds, examples = [], {}, {}
    for f in futures:
        if f.status == "finished":
            values.append(f.result())
        elif f.status == "error":
            exc = f.exception()
            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
            examples.setdefault(type(exc).__name__, str(exc)[:300])
    return values, kinds, examples


def main() -> None:
    alone_n, alone_wait = int(sys.argv[1]), float(sys.argv[2])
    report = {}
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None,
                               silence_logs=logging.CRITICAL)
        client = Client(cluster)
        try:
            client.register_plugin(HangfreeExecutor(task_timeout=5.0))
            before = client.run(os.getpid)
            with dask.annotate(executor="hangfree"):
                futures = client.map(dt.risky, range(N), pure=False)
            wait(futures, timeout=240)
            values, kinds, examples = outcomes(futures)
            after = client.run(os.getpid)
            report["hangfree"] = {"values": sorted(values), "errors": kinds, "examples": examples,
                                  "restarted": sorted(set(before.values()) - set(after.values()))}
            # Dask alone: its own executor, the same kind of tasks without the hangs
            # (nothing would end them).
            futures = client.map(dt.risky, range(alone_n), hangs=False, pure=False)
            try:
                wait(futures, timeout=alone_wait)
            except TimeoutError:
                pass
            values, kinds, _ = outcomes(futures)
            now = client.run(os.getpid)
            report["dask_alone"] = {"values": len(values), "errors": kinds,
                                    "unfinished": sum(f.status == "pending" for f in futures),
                                    "replaced": len(set(after.values()) - set(now.values()))}
            client.cancel(futures)
        finally:
            client.close()
            cluster.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
