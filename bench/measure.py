"""One measurement: one workload on one implementation, in this fresh interpreter.

    python bench/measure.py --impl hangfree.Pool --workload latency --workers 2 [--quick]

``run.py`` starts this script in a new session and reads its stdout. Lines starting
with ``@@`` are JSON events:

- ``{"event": "phase", "name": ..., "t": <CLOCK_MONOTONIC>}``: entering a step that may
  hang (crash recovery, death detection, terminate); ``run.py`` applies its hang
  watchdog from ``t`` and kills the session when it passes;
- ``{"event": "partial", ...}``: what is known so far, kept if the run is killed later;
- ``{"event": "result", "status": ..., "metrics": {...}, "note": ...}``: the outcome.

Status: ``ok`` (numbers in ``metrics``), ``breaks`` (the pool refused further work after
a worker died), ``error`` (an unexpected exception: a failure of the benchmark or of the
implementation). ``hangs`` is decided by ``run.py``'s watchdog.

Libraries are imported inside functions, so that spawn-started workers re-importing this
module as ``__mp_main__`` stay cheap.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tasks  # noqa: E402

MiB = 1 << 20


def emit(event, **fields):
    sys.stdout.write("@@" + json.dumps(dict(event=event, **fields)) + "\n")
    sys.stdout.flush()


def phase(name):
    emit("phase", name=name, t=time.monotonic())


def default_chunks(n, workers):
    """multiprocessing.Pool's default chunksize: ceil(n / (4 * workers))."""
    c, extra = divmod(n, workers * 4)
    return c + 1 if extra else max(c, 1)


# ----- implementations -------------------------------------------------------------
#
# One small adapter per implementation, all with the same methods:
#   submit(fn, *args) -> handle      result(handle) -> value (raises the task's error)
#   map(fn, items, chunksize) -> list (chunksize None: the implementation's default)
#   close_join()                     normal shutdown, waiting for the workers
#   terminate_join()                 the fastest stop the API offers, waiting for it


class _PoolLike:
    """multiprocessing.Pool's API (hangfree.Pool and both mp.Pool contexts)."""

    def submit(self, fn, *args):
        return self.p.apply_async(fn, args)

    def result(self, h):
        return h.get()

    def map(self, fn, items, chunksize):
        return self.p.map(fn, items, chunksize)

    def close_join(self):
        self.p.close()
        self.p.join()

    def terminate_join(self):
        self.p.terminate()
        self.p.join()


class HangfreePool(_PoolLike):
    def __init__(self, workers, grace=None):
        import hangfree

        kw = {} if grace is None else {"grace": grace}
        self.p = hangfree.Pool(workers, **kw)


class MpPool(_PoolLike):
    def __init__(self, workers, method, grace=None):
        import multiprocessing

        self.p = multiprocessing.get_context(method).Pool(workers)


class _ExecutorLike:
    """concurrent.futures' API."""

    def submit(self, fn, *args):
        return self.p.submit(fn, *args)

    def result(self, h):
        return h.result()

    def map(self, fn, items, chunksize):
        return list(self.p.map(fn, items, chunksize=chunksize or 1))

    def close_join(self):
        self.p.shutdown(wait=True)


class HangfreeExecutor(_ExecutorLike):
    def __init__(self, workers, grace=None):
        import hangfree

        kw = {} if grace is None else {"grace": grace}
        self.p = hangfree.ProcessPoolExecutor(workers, **kw)

    def terminate_join(self):
        self.p.terminate()  # returns when the workers are gone (bounded by grace)


class StdlibExecutor(_ExecutorLike):
    def __init__(self, workers, grace=None):
        import concurrent.futures

        self.p = concurrent.futures.ProcessPoolExecutor(workers)

    def terminate_join(self):
        if hasattr(self.p, "terminate_workers"):  # Python >= 3.14
            self.p.terminate_workers()
            self.p.shutdown(wait=True)
        else:  # the best before 3.14: drop the queue, wait for running calls
            self.p.shutdown(wait=True, cancel_futures=True)


class LokyExecutor(_ExecutorLike):
    def __init__(self, workers, grace=None):
        import loky

        self.p = loky.get_reusable_executor(max_workers=workers)

    def terminate_join(self):
        self.p.shutdown(wait=True, kill_workers=True)


class PebblePool:
    def __init__(self, workers, grace=None):
        import pebble

        self.p = pebble.ProcessPool(max_workers=workers)

    def submit(self, fn, *args):
        return self.p.schedule(fn, args=args)

    def result(self, h):
        return h.result()

    def map(self, fn, items, chunksize):
        return list(self.p.map(fn, items, chunksize=chunksize or 1).result())

    def close_join(self):
        self.p.close()
        self.p.join()

    def terminate_join(self):
        self.p.stop()
        self.p.join()


IMPLS = {
    "hangfree.Pool": HangfreePool,
    "hangfree.ProcessPoolExecutor": HangfreeExecutor,
    "mp.Pool(fork)": lambda w, grace=None: MpPool(w, "fork"),
    "mp.Pool(spawn)": lambda w, grace=None: MpPool(w, "spawn"),
    "cf.ProcessPoolExecutor": StdlibExecutor,
    "loky": LokyExecutor,
    "pebble.ProcessPool": PebblePool,
}

# Which implementations take map's chunksize=None as "their own default" (mp.Pool's
# formula); the executors get that same number explicitly, for a comparable split.
OWN_DEFAULT_CHUNKS = {"hangfree.Pool", "mp.Pool(fork)", "mp.Pool(spawn)"}

HANGFREE_GRACE = 0.2  # seconds, for the shutdown workload


def import_impl(impl):
    """Imports the implementation's library before any clock starts."""
    import concurrent.futures  # noqa: F401
    import multiprocessing.pool  # noqa: F401

    if impl.startswith("hangfree"):
        import hangfree  # noqa: F401
    elif impl == "loky":
        import loky  # noqa: F401
    elif impl.startswith("pebble"):
        import pebble  # noqa: F401


def warm(a, workers):
    """Every worker is up and serving: a batch of ``workers`` short naps lands on as many
    distinct pids (loky and pebble start workers lazily; hangfree sends calls ahead to a
    busy worker while another is still starting)."""
    a.map(tasks.inc, list(range(workers * 4)), 1)
    deadline = time.monotonic() + 60
    while True:
        hs = [a.submit(tasks.nap_pid, 0.02) for _ in range(workers)]
        if len({a.result(h) for h in hs}) >= workers:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not run {workers} calls at once within 60 s")


# ----- workloads -------------------------------------------------------------------
# Each returns (metrics, note) or raises; ``Broken`` means the pool refused more work.


class Broken(Exception):
    pass


def w_throughput_default(impl, make, workers, quick, as_list=False):
    n = 20_000 if quick else 100_000
    cs = None if impl in OWN_DEFAULT_CHUNKS else default_chunks(n, workers)
    a = make(workers)
    warm(a, workers)
    # The workload is map(inc, range(N)): the range itself. The list variant
    # shows the case where every item must be pickled.
    items = list(range(n)) if as_list else range(n)
    t0 = time.perf_counter()
    out = a.map(tasks.inc, items, cs)
    dt = time.perf_counter() - t0
    assert len(out) == n and out[-1] == n, "wrong map result"
    a.close_join()
    return {"tasks_per_s": n / dt, "n": n, "chunksize": cs or default_chunks(n, workers)}, None


def w_throughput_chunk1(impl, make, workers, quick):
    n = 2_000 if quick else 20_000
    a = make(workers)
    warm(a, workers)
    items = range(n)
    t0 = time.perf_counter()
    out = a.map(tasks.inc, items, 1)
    dt = time.perf_counter() - t0
    assert len(out) == n and out[-1] == n, "wrong map result"
    a.close_join()
    return {"tasks_per_s": n / dt, "n": n}, None


def w_latency(impl, make, workers, quick):
    rounds, warmup = (200, 50) if quick else (2_000, 200)
    a = make(workers)
    warm(a, workers)
    for _ in range(warmup):
        a.result(a.submit(tasks.noop))
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        t0 = clock()
        a.result(a.submit(tasks.noop))
        samples.append((clock() - t0) / 1000.0)
    a.close_join()
    samples.sort()
    p99 = samples[min(len(samples) - 1, math.ceil(0.99 * len(samples)) - 1)]
    return {"median_us": statistics.median(samples), "p99_us": p99, "rounds": rounds}, None


def w_payload(impl, make, workers, quick):
    n = 8 if quick else 64
    data = os.urandom(MiB)
    a = make(workers)
    warm(a, workers)
    assert a.result(a.submit(tasks.echo, data)) == data
    t0 = time.perf_counter()
    hs = [a.submit(tasks.echo, data) for _ in range(n)]
    outs = [a.result(h) for h in hs]
    dt = time.perf_counter() - t0
    assert all(len(o) == MiB for o in outs) and outs[-1] == data, "wrong echo"
    a.close_join()
    # Bytes in plus bytes out, MB = 10^6 bytes.
    return {"mb_per_s": 2 * n * MiB / dt / 1e6, "calls": n, "call_bytes": MiB}, None


def w_cold_start(impl, make, workers, quick):
    phase("cold start")
    t0 = time.perf_counter()
    a = make(workers)
    a.result(a.submit(tasks.noop))
    a.close_join()
    return {"ms": (time.perf_counter() - t0) * 1000}, None


def w_crash_respawn(impl, make, workers, quick):
    """Every worker calls os._exit(1) (one crashing call per worker, sent together), so
    the next call cannot be served by a survivor: time from sending the crashing calls
    until the result of a call sent once they have all been reported."""
    a = make(workers)
    warm(a, workers)
    phase("crash")
    t0 = time.perf_counter()
    hs = [a.submit(tasks.crash) for _ in range(workers)]
    told = []
    for h in hs:
        try:
            a.result(h)
            told.append("returned")
        except Exception as e:
            told.append(type(e).__name__)
    t_told = time.perf_counter()
    emit("partial", told=told[0], told_ms=(t_told - t0) * 1000)
    phase("next call")
    try:
        a.result(a.submit(tasks.noop))
    except Exception as e:
        raise Broken(f"crashed calls raised {told[0]}; next call: {type(e).__name__}") from e
    dt = time.perf_counter() - t0
    try:
        a.close_join()
    except Exception:
        pass
    return {"ms": dt * 1000, "told_ms": (t_told - t0) * 1000}, f"crashed calls raised {told[0]}"


def w_death(impl, make, workers, quick):
    a = make(workers)
    warm(a, workers)
    fd, path = tempfile.mkstemp(prefix="hangfree-bench-death-")
    os.close(fd)
    try:
        phase("death detection")
        h = a.submit(tasks.sigkill_self, path)
        try:
            a.result(h)
            raise AssertionError("a SIGKILLed call returned a value")
        except AssertionError:
            raise
        except Exception as e:
            t1 = time.monotonic()
            told = type(e).__name__
        with open(path) as f:
            t0 = float(f.read())
    finally:
        os.unlink(path)
    ms = (t1 - t0) * 1000
    emit("partial", detect_ms=ms, told=told)
    phase("next call")
    try:
        ok = a.result(a.submit(tasks.inc, 41)) == 42
        serves, why = ok, None if ok else "wrong result"
    except Exception as e:
        serves, why = False, type(e).__name__
    try:
        a.close_join()
    except Exception:
        pass
    note = f"told with {told}" + ("" if serves else f"; next call: {why}")
    return {"detect_ms": ms, "serves_next": serves}, note


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def w_shutdown(impl, make, workers, quick):
    """Every worker runs a call that ignores SIGTERM and sleeps 60 s; time terminate+join."""
    grace = HANGFREE_GRACE if impl.startswith("hangfree") else None
    a = make(workers, grace=grace)
    warm(a, workers)
    d = tempfile.mkdtemp(prefix="hangfree-bench-stubborn-")
    hs = [a.submit(tasks.stubborn, d, 60.0) for _ in range(workers)]
    deadline = time.monotonic() + 20
    while True:
        pids = [int(p) for p in os.listdir(d) if p.isdigit()]
        if len(pids) >= workers:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(pids)} of {workers} stubborn calls started in 20 s")
        time.sleep(0.005)
    emit("partial", worker_pids=pids)
    phase("terminate")
    t0 = time.perf_counter()
    a.terminate_join()
    dt = time.perf_counter() - t0
    left = [p for p in pids if _alive(p)]
    for p in os.listdir(d):
        os.unlink(os.path.join(d, p))
    os.rmdir(d)
    del hs
    metrics = {"ms": dt * 1000, "workers_left_alive": len(left)}
    if grace is not None:
        metrics["grace_s"] = grace
    note = f"{len(left)} stubborn workers still alive after it" if left else None
    return metrics, note


def w_cpu(impl, make, workers, quick):
    ntasks = 16 if quick else 64
    target = 0.020
    # Calibrate the loop to ~20 ms in this process, then time the calibrated call alone.
    n = 100_000
    for _ in range(3):
        t0 = time.perf_counter()
        tasks.spin(n)
        n = max(1000, int(n * target / (time.perf_counter() - t0)))
    single = []
    for _ in range(5):
        t0 = time.perf_counter()
        tasks.spin(n)
        single.append(time.perf_counter() - t0)
    task_s = statistics.median(single)
    a = make(workers)
    warm(a, workers)
    t0 = time.perf_counter()
    out = a.map(tasks.spin, [n] * ntasks, 1)
    wall = time.perf_counter() - t0
    assert len(out) == ntasks
    a.close_join()
    ideal = ntasks * task_s / workers
    return {"wall_ms": wall * 1000, "ideal_ms": ideal * 1000, "wall_over_ideal": wall / ideal,
            "task_ms": task_s * 1000, "tasks": ntasks}, None


WORKLOADS = {
    "throughput_default": w_throughput_default,
    "throughput_default_list": lambda *a: w_throughput_default(*a, as_list=True),
    "throughput_chunk1": w_throughput_chunk1,
    "latency": w_latency,
    "payload": w_payload,
    "cold_start": w_cold_start,
    "crash_respawn": w_crash_respawn,
    "cpu_bound": w_cpu,
    "death": w_death,
    "shutdown": w_shutdown,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", required=True, choices=sorted(IMPLS))
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import_impl(args.impl)
    factory = IMPLS[args.impl]
    try:
        metrics, note = WORKLOADS[args.workload](args.impl, factory, args.workers, args.quick)
        emit("result", status="ok", metrics=metrics, note=note)
    except Broken as e:
        emit("result", status="breaks", metrics={}, note=str(e))
    except BaseException as e:
        emit("result", status="error", metrics={}, note=f"{type(e).__name__}: {e}",
             traceback=traceback.format_exc())
    sys.stdout.flush()
    # Leave at once: the outcome is out, and a broken pool's atexit hooks may hang.
    os._exit(0)


if __name__ == "__main__":
    main()
