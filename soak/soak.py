#!/usr/bin/env python3
"""Soak test of hangfree's Python fronts: many tasks with random faults injected.

    .venv/bin/python soak/soak.py --quick               # 20,000 tasks (CI), about a minute
    .venv/bin/python soak/soak.py                        # 200,000 tasks
    .venv/bin/python soak/soak.py --tasks 5000 --front executor

N tasks in all: with ``--front both`` (the default) half go to ``hangfree.Pool`` (through
``apply_async``) and half to ``hangfree.ProcessPoolExecutor`` (through ``submit_with``),
one front after the other, each with its own checks.

Each task is normal (computes a checksum the soak verifies) or, with probability
``--fault-rate`` per kind (1 % by default), one fault: the worker calls os._exit, segfaults,
is SIGKILLed from outside (by a thread of this soak, given the pid the task announces),
runs past a small per-call time limit, writes a garbage frame on its channel, returns an
unpicklable result, raises, or leaves a grandchild process running.

It checks that every task has exactly one outcome, of the kind its fault calls for, that
every normal result is right, and, after each front is shut down: no process of ours left
(found through /proc by an environment marker every worker and grandchild inherits, and by
the grandchild pids the tasks reported), no zombie child, no descriptor and no thread left,
and the parent's RSS grown by less than 20 MiB after warm-up. Exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from multiprocessing.pool import MaybeEncodingError
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import soak_tasks as T  # noqa: E402

import hangfree  # noqa: E402

TAG_VAR = "HANGFREE_SOAK_TAG"
FAULTS = ["exit", "segfault", "sigkill", "timeout", "garbage", "unpicklable", "raise", "grandchild"]
# The per-call limit of a "timeout" task, and the backstop limit of tasks that wait to be
# killed (an outcome past the backstop is a timeout, which is the wrong kind: a violation).
TIMEOUT_LIMIT = 0.2
BACKSTOP = 30.0
RSS_LIMIT = 20 * 2**20


# ----- /proc --------------------------------------------------------------------------

def _stat(pid: int) -> Optional[Tuple[str, int]]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[1])


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def tagged_pids(tag: str) -> Set[int]:
    needle = f"{TAG_VAR}={tag}".encode() + b"\0"
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read() + b"\0" and alive(int(name)):
                    found.add(int(name))
        except OSError:
            continue
    return found


def zombie_children() -> Set[int]:
    me = os.getpid()
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[1] == me and st[0] == "Z":
                out.add(int(name))
    return out


def fds() -> Dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, closed already
    return out


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_gone(pids: Set[int], timeout: float) -> Set[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if alive(p)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


# ----- the killer thread ----------------------------------------------------------------

class Killer:
    """SIGKILLs, from outside, the worker of each "sigkill" task: the task announces its
    pid as a file in a private directory. Only a pid that is our child and carries our
    marker is killed (never anything found by name)."""

    def __init__(self, tag: str):
        self.dir = tempfile.mkdtemp(prefix="hangfree-soak-")
        self.tag = tag
        self.killed = 0
        self.refused: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-killer", daemon=True)
        self._thread.start()

    def _ours(self, pid: int) -> bool:
        st = _stat(pid)
        if st is None or st[1] != os.getpid():
            return False
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return f"{TAG_VAR}={self.tag}".encode() + b"\0" in f.read() + b"\0"
        except OSError:
            return False

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            for name in os.listdir(self.dir):
                if name.startswith("."):
                    continue
                path = os.path.join(self.dir, name)
                try:
                    with open(path) as f:
                        pid = int(f.read())
                    os.unlink(path)
                except (OSError, ValueError):
                    continue
                if self._ours(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.killed += 1
                    except OSError as e:
                        self.refused.append(f"kill({pid}): {e}")
                else:
                    self.refused.append(f"pid {pid} announced by task {name} is not our worker")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        shutil.rmtree(self.dir, ignore_errors=True)


# ----- one front ----------------------------------------------------------------------

def classify(kind: str, i: int, ok: bool, value: Any, grandchildren: Set[int]) -> Tuple[str, Optional[str]]:
    """(outcome kind, violation or None) for task ``i`` injected with ``kind``."""
    if ok:
        outcome = "value"
    elif isinstance(value, hangfree.WorkerProtocolError):
        outcome = "protocol"
    elif isinstance(value, hangfree.WorkerLostError):
        outcome = f"lost:{value.signal_name or f'exit {value.exitcode}'}"
    elif isinstance(value, hangfree.TaskTimeoutError):
        outcome = "timed_out"
    elif isinstance(value, MaybeEncodingError) or (isinstance(value, TypeError) and "cannot pickle" in str(value)):
        # A Pool reports a result that cannot be pickled as MaybeEncodingError; an
        # executor, as concurrent.futures does, with the pickling error itself.
        outcome = "raised:unpicklable"
    elif isinstance(value, ValueError) and "raised on purpose" in str(value):
        outcome = "raised:ValueError"
    else:
        outcome = f"other:{type(value).__name__}"
    expected = {
        "normal": "value",
        "exit": "lost:exit 3",
        "segfault": "lost:SIGSEGV",
        "sigkill": "lost:SIGKILL",
        "timeout": "timed_out",
        "garbage": "protocol",
        "unpicklable": "raised:unpicklable",
        "raise": "raised:ValueError",
        "grandchild": "value",
    }[kind]
    if outcome != expected:
        return outcome, f"task {i} ({kind}): expected {expected}, got {outcome}: {value!r}"[:500]
    if kind == "normal" and value != (i, T.checksum(i)):
        return outcome, f"task {i}: wrong value {value!r}"
    if kind == "raise" and str(i) not in str(value):
        return outcome, f"task {i}: the exception is another task's: {value}"
    if kind == "grandchild":
        if not (isinstance(value, tuple) and value[0] == i and isinstance(value[1], int)):
            return outcome, f"task {i}: bad grandchild answer {value!r}"
        grandchildren.add(value[1])
    return outcome, None


class Run:
    def __init__(self, front: str, n: int, rate: float, seed: int, workers: int, window: int, tag: str):
        self.front, self.n, self.workers, self.window, self.tag = front, n, workers, window, tag
        rng = random.Random(seed)
        self.kinds: List[str] = []
        for _ in range(n):
            r = rng.random()
            k = int(r / rate) if rate > 0 else len(FAULTS)
            self.kinds.append(FAULTS[k] if k < len(FAULTS) else "normal")
        self.calls = [0] * n  # outcomes seen per task: must end all 1
        self.outcomes: Counter = Counter()
        self.violations: List[str] = []
        self.grandchildren: Set[int] = set()
        self.done = 0
        self.all_done = threading.Event()
        self.slots = threading.BoundedSemaphore(window)
        self.lock = threading.Lock()
        self.rss_marks: Dict[str, int] = {}
        self.stats: Dict[str, int] = {}
        self.wall = 0.0
        self.killed = 0
        self.lost = 0

    def record(self, i: int, ok: bool, value: Any) -> None:
        try:
            with self.lock:
                self.calls[i] += 1
                if self.calls[i] > 1:
                    self.violations.append(f"task {i} got a second outcome: {value!r}"[:300])
                    return
                outcome, bad = classify(self.kinds[i], i, ok, value, self.grandchildren)
                self.outcomes[outcome] += 1
                if bad:
                    self.violations.append(bad)
                self.done += 1
                if self.done == self.n:
                    self.all_done.set()
        finally:
            self.slots.release()

    def settled(self, i: int, f: Any) -> None:
        try:
            exc = f.exception(0)
        except BaseException as e:  # cancelled: an outcome of the wrong kind, not a crash here
            exc = e
        self.record(i, exc is None, f.result(0) if exc is None else exc)

    def call_of(self, i: int, killer_dir: str) -> Tuple[Callable, tuple, Optional[float]]:
        kind = self.kinds[i]
        if kind == "normal":
            return T.normal, (i,), None
        if kind == "sigkill":
            return T.announce_and_sleep, (i, killer_dir), BACKSTOP
        if kind == "timeout":
            return T.sleep_long, (i,), TIMEOUT_LIMIT
        if kind == "garbage":
            return T.garbage, (i,), BACKSTOP
        fn = {"exit": T.exit_, "segfault": T.segfault, "unpicklable": T.unpicklable, "raise": T.raise_,
              "grandchild": T.grandchild}[kind]
        return fn, (i,), None

    def go(self, limit: float) -> None:
        killer = Killer(self.tag)
        warm = max(1, self.n // 10)
        t0 = time.monotonic()
        if self.front == "pool":
            front: Any = hangfree.Pool(self.workers, grace=0.5)
        else:
            front = hangfree.ProcessPoolExecutor(self.workers, grace=0.5)
        try:
            for i in range(self.n):
                if not self.slots.acquire(timeout=limit):
                    self.violations.append(f"no free slot for {limit} s at task {i}: outcomes stopped coming")
                    break
                if i == warm:
                    gc.collect()
                    self.rss_marks["warm"] = rss()
                fn, args, timeout = self.call_of(i, killer.dir)
                if self.front == "pool":
                    front.apply_async(fn, args, callback=lambda v, i=i: self.record(i, True, v),
                                      error_callback=lambda e, i=i: self.record(i, False, e), task_timeout=timeout)
                else:
                    f = front.submit_with(fn, args, timeout=timeout)
                    f.add_done_callback(lambda f, i=i: self.settled(i, f))
            if not self.all_done.wait(limit):
                self.violations.append(f"only {self.done} of {self.n} tasks had an outcome after {limit} s")
            gc.collect()
            self.rss_marks["end"] = rss()
            self.stats = front.stats()
        finally:
            if self.front == "pool":
                front.close()
                front.join()
            else:
                front.shutdown(wait=True, timeout=10.0)
            killer.stop()
        self.wall = time.monotonic() - t0
        self.killed = killer.killed
        self.violations += [f"killer: {r}" for r in killer.refused]
        lost = [i for i, c in enumerate(self.calls) if c == 0]
        if lost:
            self.violations.append(f"{len(lost)} tasks without an outcome, e.g. {lost[:10]}")
        self.lost = len(lost)
        del front


def check_leaks(tag: str, grandchildren: Set[int], base_fds: Dict[int, str], base_threads: int) -> List[str]:
    leaks = []
    # The fork server an ended pool keeps for the next one is the process's, not the
    # pool's (README, guarantee 7): stopped here, it must leave nothing either.
    hangfree.release_fork_servers()
    left = wait_gone(tagged_pids(tag) | grandchildren, 3.0)
    if left:
        leaks.append(f"processes left: {sorted(left)}")
        for p in left:  # ours: found by the marker or reported by our tasks
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    z = zombie_children()
    if z:
        leaks.append(f"unreaped children: {sorted(z)}")
    deadline = time.monotonic() + 3.0
    while True:
        now_fds, now_threads = fds(), threads()
        extra = {fd: t for fd, t in now_fds.items() if base_fds.get(fd) != t}
        if (not extra and now_threads <= base_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if extra:
        leaks.append(f"descriptors left: {extra}")
    if now_threads > base_threads:
        names = [t.name for t in threading.enumerate()]
        leaks.append(f"threads: {now_threads} (was {base_threads}); Python threads {names}")
    return leaks


def warm_up(workers: int) -> None:
    """One small pool and executor first, so the lasting allocations of a first use
    (imports, the extension, logging) are in the baselines."""
    with hangfree.Pool(workers) as p:
        p.map(T.normal, range(200))
    with hangfree.ProcessPoolExecutor(workers) as ex:
        list(ex.map(T.normal, range(200)))


def table(rows: List[Dict[str, Any]]) -> str:
    """Metrics down, one column per front."""
    keys = ["tasks"] + [f"fault:{k}" for k in FAULTS] + ["outcomes", "lost", "leaks", "violations",
                                                          "workers spawned/lost", "rss growth", "wall"]
    width = max(len(str(r.get(k, ""))) for r in rows for k in keys if k != "outcomes")
    lines = [f"| {'':<26} | " + " | ".join(f"{r['front']:<{width}}" for r in rows) + " |",
             f"|{'-' * 28}|" + "|".join("-" * (width + 2) for _ in rows) + "|"]
    for k in keys:
        if k == "outcomes":
            kinds = sorted({o for r in rows for o in r["outcomes"]})
            for o in kinds:
                lines.append(f"| {'outcome ' + o:<26} | " + " | ".join(f"{r['outcomes'].get(o, 0):<{width}}" for r in rows) + " |")
            continue
        lines.append(f"| {k:<26} | " + " | ".join(f"{str(r.get(k, '')):<{width}}" for r in rows) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=200_000, help="tasks in all, split between the fronts (default 200,000)")
    ap.add_argument("--quick", action="store_true", help="20,000 tasks in all")
    ap.add_argument("--front", choices=["pool", "executor", "both"], default="both")
    ap.add_argument("--fault-rate", type=float, default=0.01, help="probability of each fault kind")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--window", type=int, default=256, help="tasks in flight at most")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=float, default=None, help="seconds before the whole soak counts as hung")
    a = ap.parse_args()
    n = 20_000 if a.quick else a.tasks
    fronts = ["pool", "executor"] if a.front == "both" else [a.front]
    limit = a.limit or 120.0 + n * 0.02
    # A hang anywhere (even in shutdown) ends the soak with every thread's stack: exit 1.
    faulthandler.dump_traceback_later(limit, exit=True)

    tag = uuid.uuid4().hex
    os.environ[TAG_VAR] = tag  # every worker and grandchild inherits it
    warm_up(a.workers)
    gc.collect()
    base_fds, base_threads = fds(), threads()
    base_rss = rss()
    failed = False
    rows = []
    t_start = time.monotonic()
    for i, front in enumerate(fronts):
        share = n // len(fronts) + (1 if i < n % len(fronts) else 0)
        run = Run(front, share, a.fault_rate, a.seed + i, a.workers, a.window, tag)
        print(f"soak: {front}: {share} tasks, {a.workers} workers ...", flush=True)
        run.go(limit)
        leaks = check_leaks(tag, run.grandchildren, base_fds, base_threads)
        gc.collect()
        after = rss()
        warm = run.rss_marks.get("warm", base_rss)
        growth = max(run.rss_marks.get("end", after), after) - warm
        if growth >= RSS_LIMIT:
            leaks.append(f"RSS grew by {growth / 2**20:.1f} MiB after warm-up (limit 20 MiB)")
        injected = Counter(run.kinds)
        st = run.stats
        row = {"front": front, "tasks": share,
               "workers spawned/lost": f"{st.get('workers_spawned')} / {st.get('workers_lost')}","lost": run.lost, "leaks": len(leaks),
               "violations": len(run.violations), "wall": f"{run.wall:.1f} s",
               "rss growth": f"{growth / 2**20:+.1f} MiB (from {warm / 2**20:.0f})",
               "outcomes": dict(run.outcomes)}
        for k in FAULTS:
            row[f"fault:{k}"] = injected[k]
        row["fault:sigkill"] = f"{injected['sigkill']} (killer sent {run.killed})"
        row["fault:grandchild"] = f"{injected['grandchild']} ({len(run.grandchildren)} left running)"
        rows.append(row)
        for v in run.violations[:20]:
            print(f"VIOLATION [{front}]: {v}", flush=True)
        for l in leaks:
            print(f"LEAK [{front}]: {l}", flush=True)
        if run.violations or leaks or run.lost:
            failed = True
    faulthandler.cancel_dump_traceback_later()
    total = time.monotonic() - t_start
    print(f"\nhangfree soak ({'quick' if a.quick else 'full'}; fault rate {a.fault_rate:.1%} per kind, seed {a.seed})")
    print(table(rows))
    print(f"\ntotal wall time {total:.1f} s; result: {'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
