#!/usr/bin/env python3
"""hangfree's benchmark against multiprocessing, concurrent.futures, loky and pebble.

    .venv/bin/python bench/run.py                 # full run: bench/results/latest.{md,json,png}
    .venv/bin/python bench/run.py --quick         # CI: every workload completes everywhere
    .venv/bin/python bench/run.py --workers 4 --repeats 7

Every measurement is one fresh interpreter (``bench/measure.py``) started in its own
session; implementations are interleaved round-robin within each repeat (the order
rotates from one repeat to the next). A watchdog kills a measurement's session when a
step that may hang (crash recovery, death detection, terminate) passes its limit, and
reports "hangs (killed after N s)". See bench/README.md for what each workload does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEASURE = os.path.join(HERE, "measure.py")

IMPLS = [
    "hangfree.Pool",
    "hangfree.ProcessPoolExecutor",
    "mp.Pool(fork)",
    "mp.Pool(spawn)",
    "cf.ProcessPoolExecutor",
    "loky",
    "pebble.ProcessPool",
]
HANGFREE = ["hangfree.Pool", "hangfree.ProcessPoolExecutor"]
PEERS = [i for i in IMPLS if i not in HANGFREE]

WORKLOADS = [
    "throughput_default",
    "throughput_default_list",
    "throughput_chunk1",
    "latency",
    "payload",
    "cold_start",
    "crash_respawn",
    "cpu_bound",
    "death",
    "shutdown",
]
# Workloads that inject a fault: a peer may hang or break there (that is what is being
# shown); anywhere else, and for hangfree anywhere, anything but a number is a failure.
FAULT_WORKLOADS = {"crash_respawn", "death", "shutdown"}

# Table rows: (workload, metric, label, unit kind, higher is better)
ROWS = [
    ("throughput_default", "tasks_per_s", "tiny tasks, default chunks (tasks/s)", "rate", True),
    ("throughput_default_list", "tasks_per_s", "tiny tasks, default chunks, list input (tasks/s)", "rate", True),
    ("throughput_chunk1", "tasks_per_s", "tiny tasks, chunksize=1 (tasks/s)", "rate", True),
    ("latency", "median_us", "round trip, median (µs)", "num", False),
    ("latency", "p99_us", "round trip, p99 (µs)", "num", False),
    ("payload", "mb_per_s", "1 MiB echo (MB/s, in+out)", "num", True),
    ("cold_start", "ms", "cold start: new pool + 1 call + close/join (ms)", "num", False),
    ("crash_respawn", "ms", "respawn after os._exit(1) in every worker (ms)", "num", False),
    ("cpu_bound", "wall_ms", "CPU-bound, wall time (ms)", "num", False),
    ("cpu_bound", "wall_over_ideal", "CPU-bound, wall / ideal", "ratio", False),
    ("death", "detect_ms", "death detection, SIGKILL mid-call (ms)", "num", False),
    ("shutdown", "ms", "terminate+join, workers ignore SIGTERM (ms)", "num", False),
]


# ----- environment -----------------------------------------------------------------


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions():
    out = {}
    for mod in ("hangfree", "loky", "pebble", "matplotlib"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            out[mod] = f"not importable: {type(e).__name__}"
    return out


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" (uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def hangfree_fingerprint():
    """A hash of the hangfree package as installed (editable: the source tree), to notice
    it changing under a run."""
    import hashlib

    h = hashlib.sha256()
    pkg = os.path.join(ROOT, "python", "hangfree")
    for dirpath, dirnames, files in sorted(os.walk(pkg)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".so")):
                try:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        h.update(name.encode() + f.read())
                except OSError:
                    pass
    return h.hexdigest()[:16]


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def command_line():
    exe = sys.executable
    rel = os.path.relpath(exe)
    if not rel.startswith(".."):
        exe = rel
    return shlex.join([exe] + sys.argv)


# ----- one measurement, under a watchdog -------------------------------------------


def session_members(sid):
    """Pids whose session is ``sid`` (the measurement and everything it started that
    did not call setsid: hangfree's workers lead their own process groups but stay in the
    session)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(name))
    return pids


def kill_session(sid):
    """SIGKILL to the measurement's process group and to every member of its session, by
    pid. Never by name."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except OSError:
        pass
    for pid in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def measure(impl, workload, args, limits):
    # "hangfree.Pool@base" is hangfree.Pool as built in --baseline's directory.
    front, _, base = impl.partition("@")
    cmd = [sys.executable, MEASURE, "--impl", front, "--workload", workload, "--workers", str(args.workers)]
    if args.quick:
        cmd.append("--quick")
    # The child writes through its own open file (O_APPEND) and this process reads through
    # another, so reading never moves the offset the child (or its forked workers) write at.
    tmpdir = tempfile.mkdtemp(prefix="hangfree-bench-")
    out_path, err_path = os.path.join(tmpdir, "stdout"), os.path.join(tmpdir, "stderr")
    # Its temporary files go in the same directory, removed even if it is killed.
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", TMPDIR=tmpdir)
    if base:
        # Ahead of the editable install's path entry, so this interpreter and its workers
        # (which inherit the variable and the sys.path it made) import the baseline.
        env["PYTHONPATH"] = os.path.abspath(args.baseline)
    started = time.monotonic()
    with open(out_path, "a") as out_w, open(err_path, "a") as err_w:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out_w, stderr=err_w, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    out = open(out_path)
    err = open(err_path)
    events, buf, pos = [], "", 0
    phase, killed = None, None

    def read_events():
        nonlocal buf, pos, phase
        out.seek(pos)
        chunk = out.read()
        pos = out.tell()
        buf += chunk
        *lines, buf = buf.split("\n")
        for line in lines:
            if line.startswith("@@"):
                try:
                    ev = json.loads(line[2:])
                except ValueError:
                    continue
                events.append(ev)
                if ev.get("event") == "phase":
                    phase = ev

    while True:
        try:
            proc.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
        read_events()
        now = time.monotonic()
        if phase is not None and phase["name"] in limits["phases"]:
            limit = limits["phases"][phase["name"]]
            if now - phase["t"] > limit:
                killed = ("hangs", phase["name"], limit)
        if killed is None and now - started > limits["total"]:
            killed = ("timeout", phase["name"] if phase else "setup", limits["total"])
        if killed is not None:
            kill_session(proc.pid)
            proc.wait()
            break
    read_events()
    if buf.startswith("@@"):
        buf += "\n"
        read_events()
    wall = time.monotonic() - started

    # Whatever the measurement left behind in its session: give it a moment to exit
    # (resource trackers leave on EOF), then kill it, by pid, and say so.
    stray = session_members(proc.pid)
    t_end = time.monotonic() + 2.0
    while stray and time.monotonic() < t_end:
        time.sleep(0.02)
        stray = session_members(proc.pid)
    if stray:
        kill_session(proc.pid)

    result = next((e for e in reversed(events) if e.get("event") == "result"), None)
    partial = {}
    for e in events:
        if e.get("event") == "partial":
            partial.update({k: v for k, v in e.items() if k != "event"})
    rec = {"impl": impl, "workload": workload, "wall_s": round(wall, 3), "partial": partial,
           "stray_processes": len(stray)}
    if killed is not None:
        kind, where, limit = killed
        rec.update(status=kind, metrics={}, note=f"killed {limit:g} s into '{where}'", phase=where, limit_s=limit)
    elif result is None:
        err.seek(0)
        tail = err.read()[-1500:]
        rec.update(status="error", metrics={}, note=f"exited with {proc.returncode} without a result", stderr_tail=tail)
    else:
        rec.update(status=result["status"], metrics=result.get("metrics", {}), note=result.get("note"))
        if result.get("traceback"):
            rec["traceback"] = result["traceback"]
    out.close()
    err.close()
    shutil.rmtree(tmpdir, ignore_errors=True)
    return rec


# ----- aggregation and reporting ---------------------------------------------------


def fmt_num(x, kind="num"):
    if x is None:
        return "–"
    if kind == "ratio":
        return f"{x:.2f}"
    if kind == "rate" or abs(x) >= 10_000:
        if abs(x) >= 1e6:
            return f"{x / 1e6:.2f}M"
        if abs(x) >= 1e3:
            return f"{x / 1e3:.1f}k"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def summarize(records, workload, impl, metric):
    recs = [r for r in records if r["workload"] == workload and r["impl"] == impl]
    vals = [r["metrics"][metric] for r in recs if r["status"] == "ok" and metric in r["metrics"]]
    bad = [r for r in recs if r["status"] != "ok"]
    s = {"n": len(recs), "ok": len(vals), "values": vals,
         "statuses": sorted({r["status"] for r in bad}), "notes": sorted({r["note"] for r in recs if r.get("note")})}
    if vals:
        s.update(median=statistics.median(vals), min=min(vals), max=max(vals))
    if workload == "death":
        s["serves_next"] = all(r["metrics"].get("serves_next") for r in recs if r["status"] == "ok") if vals else None
        s["detect_ms_partial"] = [r["partial"]["detect_ms"] for r in bad if "detect_ms" in r.get("partial", {})]
    if bad:
        s["bad_note"] = bad[0].get("note")
        s["limit_s"] = bad[0].get("limit_s")
    return s


def cell(s, kind):
    if s["n"] == 0:
        return "–"
    if not s["ok"]:
        st = s["statuses"][0]
        if st == "hangs":
            return f"hangs (killed after {s['limit_s']:g} s)"
        if st == "breaks":
            return "breaks"
        return st
    text = f"{fmt_num(s['median'], kind)} ({fmt_num(s['min'], kind)}–{fmt_num(s['max'], kind)})"
    if s["ok"] < s["n"]:
        text += f" [{s['n'] - s['ok']}/{s['n']} {'/'.join(s['statuses'])}]"
    if s.get("serves_next") is False:
        text += ", pool broken after"
    elif s.get("serves_next"):
        text += ", serves next"
    return text


def med(summaries, w, impl, m):
    s = summaries.get((w, impl, m))
    return s.get("median") if s else None


def targets(summaries, records):
    rows = []

    def add(name, front, measured, required, met, detail=""):
        rows.append({"target": name, "front": front, "measured": measured, "required": required,
                     "met": met, "detail": detail})

    base = "mp.Pool(fork)"
    for hf in HANGFREE:
        def ratio(w, m, inverse=False):
            a, b = med(summaries, w, hf, m), med(summaries, w, base, m)
            if a is None or b is None or b == 0 or a == 0:
                return None
            return b / a if inverse else a / b

        r = ratio("throughput_chunk1", "tasks_per_s")
        add("chunksize-1 throughput ≥ 2× mp.Pool(fork)", hf, r, 2.0, None if r is None else r >= 2.0)
        r = ratio("throughput_default", "tasks_per_s")
        add("default-chunk throughput ≥ 1.5× mp.Pool(fork)", hf, r, 1.5, None if r is None else r >= 1.5)
        r = ratio("latency", "median_us")  # hangfree / mp: must be <= 1/3
        add("round-trip median ≤ ⅓ of mp.Pool(fork)'s", hf, r, 1 / 3, None if r is None else r <= 1 / 3,
            "ratio = hangfree median / mp.Pool(fork) median")
        p99 = med(summaries, "latency", hf, "p99_us")
        rows.append({"target": "round-trip p99 ≤ 200 µs", "front": hf, "measured": p99, "required": 200.0,
                     "met": None if p99 is None else p99 <= 200.0, "unit": "µs"})
        peers = [(med(summaries, "payload", p, "mb_per_s"), p) for p in PEERS]
        peers = [x for x in peers if x[0] is not None]
        a = med(summaries, "payload", hf, "mb_per_s")
        if peers and a is not None:
            best, who = max(peers)
            add("payload MB/s ≥ 3× the best peer's (issue 14)", hf, a / best, 3.0, a / best >= 3.0, f"best peer: {who}")
        else:
            add("payload MB/s ≥ 3× the best peer's (issue 14)", hf, None, 3.0, None)
        a, b = med(summaries, "cold_start", hf, "ms"), med(summaries, "cold_start", "mp.Pool(spawn)", "ms")
        r = a / b if a is not None and b else None
        add("cold start ≤ mp.Pool(spawn)'s", hf, r, 1.0, None if r is None else r <= 1.0,
            "ratio = hangfree ms / mp.Pool(spawn) ms")
        # Issue 6's aim for the fork server: a crashed worker replaced and serving in
        # under 10 ms.
        d = med(summaries, "crash_respawn", hf, "ms")
        rows.append({"target": "respawn after a crash in every worker ≤ 10 ms", "front": hf, "measured": d,
                     "required": 10.0, "unit": "ms", "met": None if d is None else d <= 10.0})
        s = summaries.get(("death", hf, "detect_ms"))
        d = s.get("median") if s else None
        rows.append({"target": "death detection ≤ 5 ms, pool still serving", "front": hf, "measured": d,
                     "required": 5.0, "unit": "ms", "met": None if d is None else (d <= 5.0 and bool(s.get("serves_next"))),
                     "detail": None if s is None else ("serves next call" if s.get("serves_next")
                                                       else "does NOT serve the next call")})
        s = summaries.get(("shutdown", hf, "ms"))
        d = s.get("median") if s else None
        graces = [r["metrics"].get("grace_s") for r in records if r["workload"] == "shutdown" and r["impl"] == hf and r["status"] == "ok"]
        g = graces[0] if graces else 0.2
        rows.append({"target": f"terminate with stubborn workers ≤ grace + 100 ms (grace = {g * 1000:.0f} ms)", "front": hf,
                     "measured": d, "required": g * 1000 + 100, "unit": "ms",
                     "met": None if d is None else d <= g * 1000 + 100})
    return rows


def fmt_target(t):
    m = t["measured"]
    if m is None:
        return "n/a"
    if t.get("unit"):
        return f"{fmt_num(m)} {t['unit']}"
    return f"{m:.2f}×"


def fmt_required(t):
    r = t["required"]
    name = t["target"]
    if t.get("unit"):
        return f"≤ {fmt_num(r)} {t['unit']}"
    if "≤" in name:
        return f"≤ {r:.2f}×"
    return f"≥ {r:.2f}×"


def failures(records):
    """Outcomes that make --quick (and the full run) exit non-zero."""
    bad = []
    for r in records:
        where = f"{r['workload']} / {r['impl']}"
        if r["status"] in ("error", "timeout"):
            bad.append(f"{where}: {r['status']}: {r.get('note')}")
        elif r["status"] != "ok" and (r["impl"] in HANGFREE or r["workload"] not in FAULT_WORKLOADS):
            bad.append(f"{where}: {r['status']}: {r.get('note')}")
        elif r["impl"] in HANGFREE and r["workload"] == "death" and not r["metrics"].get("serves_next"):
            bad.append(f"{where}: the pool does not serve the call after a worker death ({r.get('note')})")
        elif r["impl"] in HANGFREE and r["status"] == "ok" and r["stray_processes"]:
            bad.append(f"{where}: {r['stray_processes']} processes outlived the measurement")
        elif r["impl"] in HANGFREE and r["workload"] == "shutdown" and r["metrics"].get("workers_left_alive"):
            bad.append(f"{where}: {r['metrics']['workers_left_alive']} workers alive after terminate+join")
    return bad


def write_chart(path, summaries, impls, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(ROWS)
    cols = 2
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(14, 3.0 * nrows))
    axes = axes.flatten()
    colors = ["#d62728" if i in HANGFREE else "#1f77b4" for i in impls]
    for ax, (w, m, label, kind, higher) in zip(axes, ROWS):
        meds, lo, hi, texts = [], [], [], []
        for impl in impls:
            s = summaries.get((w, impl, m))
            if s and s.get("median") is not None:
                meds.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
                texts.append(None if s.get("serves_next") is not False else f"{fmt_num(s['median'])}, pool broken after")
            else:
                meds.append(0)
                lo.append(0)
                hi.append(0)
                texts.append(("hangs" if s and "hangs" in s["statuses"] else
                              "breaks" if s and "breaks" in s["statuses"] else "n/a") if s and s["n"] else "–")
        y = range(len(impls))
        ax.barh(list(y), meds, xerr=[lo, hi], color=colors, capsize=3)
        for yi, t in zip(y, texts):
            if t:
                ax.text(meds[yi], yi, " " + t, va="center", ha="left", fontsize=8, color="black")
        ax.set_yticks(list(y))
        ax.set_yticklabels(impls, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label + ("  (higher is better)" if higher else "  (lower is better)"), fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


METHOD = """\
## Method

- Every measurement is a fresh interpreter (`bench/measure.py`) in its own session; the
  library is imported before any clock starts. Implementations are interleaved
  round-robin within each repeat and the order rotates between repeats. Cells show the
  median over repeats with min–max in parentheses.
- Pools are warmed (every worker has served a call) before timing, except cold start.
- **tiny tasks, default chunks**: `map(inc, range(N))`, the range object itself, as the
  issue specifies (hangfree sends a chunk of a range as a range; the others pickle each
  chunk's items). **list input**: the same over `list(range(N))`, where every pool
  pickles every item. `hangfree.Pool` and `mp.Pool` use their own default chunksize
  (`ceil(N / (4 × workers))`); the executors (`hangfree.ProcessPoolExecutor`,
  `cf.ProcessPoolExecutor`, loky, pebble) are given that same chunksize explicitly.
  **chunksize=1**: `map(inc, range(20_000), chunksize=1)`, every implementation with
  chunksize 1.
- **round trip**: sequential `apply_async(noop).get()` / `submit(noop).result()` (pebble:
  `schedule`), after a warm-up; median and p99 of the individual round trips.
- **1 MiB echo**: the calls are all submitted at once, then collected; MB/s counts bytes
  in plus bytes out (MB = 10⁶ bytes).
- **cold start**: pool constructor + one `noop` call + close/join (executors:
  `shutdown(wait=True)`; loky: `get_reusable_executor`).
- **respawn after crash**: one `os._exit(1)` call per worker, sent together (so no
  surviving worker can serve the next call), then a `noop` once all have been reported;
  ms from sending the crashing calls to the `noop`'s result. "breaks": the same pool
  refused the next call; "hangs": the crashing calls were never reported.
- **CPU-bound**: pure-Python loop calibrated to ~20 ms in the measuring process;
  `map(spin, …, chunksize=1)`; ideal = tasks × (the calibrated call's time) / workers.
- **death detection**: the call writes `time.monotonic()` (system-wide clock) to a file
  and SIGKILLs its own process; ms until the caller's `get()`/`result()` raises; then
  one more call on the same pool ("serves next" or "pool broken after").
- **terminate**: every worker runs a call that sets SIGTERM to SIG_IGN and sleeps 60 s;
  ms for the API's fastest stop: `terminate(); join()` (`hangfree.Pool`, `mp.Pool`),
  `terminate()` (`hangfree.ProcessPoolExecutor`), `shutdown(wait=True,
  cancel_futures=True)` (`cf.ProcessPoolExecutor` before Python 3.14, which has no
  terminate), `shutdown(wait=True, kill_workers=True)` (loky), `stop(); join()` (pebble).
  hangfree runs with `grace=0.2` s here.
- `cf.ProcessPoolExecutor` uses the platform default start method (fork on Linux
  before Python 3.14); pebble uses multiprocessing's default context (fork).
- A watchdog kills a measurement's session (by process group and session id, never by
  name) when a step that may hang passes its limit: "hangs (killed after N s)".
"""


def write_reports(out_base, env, records, summaries, tgt, impls, workloads, fails):
    md = []
    md.append("# hangfree benchmark\n")
    if env["quick"]:
        md.append("**--quick run: sizes are reduced and there is one repeat; these numbers only show that every workload completes.**\n")
    md.append(f"- date: {env['date']}")
    md.append(f"- machine: {env['nproc']} CPUs (`nproc`), {env['cpu_model']}; {env['platform']}")
    md.append(f"- Python {env['python']}; {', '.join(f'{k} {v}' for k, v in env['versions'].items())}; hangfree at git {env['git']}")
    md.append(f"- command: `{env['command']}`")
    md.append(f"- workers: {env['workers']}, repeats: {env['repeats']}, wall time: {env['wall_s']:.0f} s")
    la0, la1 = env.get("loadavg_start"), env.get("loadavg_end")
    if la0 and la1:
        md.append(f"- load average (1/5/15 min) at start {la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}, at end {la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f}"
                  + (" — **the machine was busy: re-measure on a quiet machine**" if max(la0[0], la1[0]) > 0.5 * env["nproc"] else ""))
    if env.get("hangfree_fingerprint_start") != env.get("hangfree_fingerprint_end"):
        md.append("- **hangfree's files (python/hangfree: .py and the extension) changed during this run: "
                  "the hangfree numbers mix versions; run again**")
    md.append("")
    md.append("## Results\n")
    md.append("| workload | " + " | ".join(impls) + " |")
    md.append("|---|" + "---|" * len(impls))
    for w, m, label, kind, higher in ROWS:
        if w not in workloads:
            continue
        cells = [cell(summaries[(w, i, m)], kind) for i in impls]
        md.append(f"| {label} | " + " | ".join(cells) + " |")
    md.append("")
    md.append("## Targets (hangfree against the others, medians of this run)\n")
    md.append("| target | front | measured | required | met? |")
    md.append("|---|---|---|---|---|")
    for t in tgt:
        met = "n/a" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
        detail = f" ({t['detail']})" if t.get("detail") else ""
        md.append(f"| {t['target']} | {t['front']} | {fmt_target(t)}{detail} | {fmt_required(t)} | {met} |")
    md.append("")
    notes = []
    for w in workloads:
        for i in impls:
            ns = sorted({r["note"] for r in records if r["workload"] == w and r["impl"] == i and r.get("note")})
            if ns:
                notes.append(f"- {w} / {i}: " + "; ".join(ns))
    stray = {}
    for r in records:
        if r["stray_processes"]:
            stray.setdefault((r["workload"], r["impl"]), []).append(r["stray_processes"])
    for (w, i), v in sorted(stray.items()):
        notes.append(f"- {w} / {i}: processes left in the measurement's session after it ended, killed by the harness: {v}")
    if notes:
        md.append("## Notes per cell\n")
        md.extend(notes)
        md.append("")
    if fails:
        md.append("## Unexpected failures\n")
        md.extend(f"- {f}" for f in fails)
        md.append("")
    md.append(METHOD)
    text = "\n".join(md)
    with open(out_base + ".md", "w") as f:
        f.write(text)
    with open(out_base + ".json", "w") as f:
        json.dump({"env": env, "records": records, "targets": tgt,
                   "summary": [{"workload": w, "impl": i, "metric": m, **{k: v for k, v in s.items()}}
                               for (w, i, m), s in sorted(summaries.items())],
                   "unexpected_failures": fails}, f, indent=1, default=str)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat: check that every workload completes (CI)")
    ap.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="measurements per workload and implementation (default 5; --quick: 1)")
    ap.add_argument("--impl", action="append", choices=IMPLS, help="only these implementations (repeatable)")
    ap.add_argument("--workload", action="append", choices=WORKLOADS, help="only these workloads (repeatable)")
    ap.add_argument("--hang-timeout", type=float, default=None,
                    help="seconds before a crash/death step counts as a hang (default 5; --quick: 3)")
    ap.add_argument("--baseline", metavar="DIR", default=None,
                    help="also measure the hangfree package found in DIR (a directory holding hangfree/ with its "
                         "built _core extension, e.g. an older commit's python/), as 'hangfree.Pool@base' and "
                         "'hangfree.ProcessPoolExecutor@base', interleaved with the rest: a before/after in one run")
    ap.add_argument("--out", default=None, help="output path without extension (default bench/results/latest; --quick: bench/results/quick)")
    args = ap.parse_args()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    hang = args.hang_timeout if args.hang_timeout is not None else (3.0 if args.quick else 5.0)
    # pebble stops workers one at a time with a 3 s term timeout each before SIGKILL:
    # the terminate limit leaves room for that, so a slow stop is not called a hang.
    term_limit = max(10.0, 3.0 * args.workers + 4.0) if args.quick else max(15.0, 3.0 * args.workers + 6.0)
    limits = {"phases": {"crash": hang, "next call": hang, "death detection": hang, "terminate": term_limit,
                         "cold start": 60.0},
              "total": 120.0 if args.quick else 300.0}
    impls = args.impl or IMPLS
    if args.baseline:
        based = [f"{i}@base" for i in impls if i in HANGFREE]
        HANGFREE.extend(based)
        impls = impls + based
    workloads = args.workload or WORKLOADS
    out_base = args.out or os.path.join(HERE, "results", "quick" if args.quick else "latest")
    os.makedirs(os.path.dirname(os.path.abspath(out_base)), exist_ok=True)

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "git": git_rev(),
        "command": command_line(),
        "workers": args.workers,
        "repeats": repeats,
        "quick": args.quick,
        "limits": limits,
        "loadavg_start": loadavg(),
        "hangfree_fingerprint_start": hangfree_fingerprint(),
    }
    t_start = time.monotonic()
    records = []
    total = repeats * len(workloads) * len(impls)
    k = 0
    for rep in range(repeats):
        for w in workloads:
            shift = rep % len(impls)
            for impl in impls[shift:] + impls[:shift]:
                k += 1
                rec = measure(impl, w, args, limits)
                rec["repeat"] = rep
                records.append(rec)
                brief = ", ".join(f"{m}={fmt_num(v) if isinstance(v, float) else v}" for m, v in rec["metrics"].items())
                print(f"[{k}/{total}] rep {rep + 1} {w:18s} {impl:28s} {rec['status']:7s} {brief}"
                      + (f"  ({rec['note']})" if rec.get("note") and rec["status"] != "ok" else ""), flush=True)
                if rec["status"] == "error" and (rec.get("traceback") or rec.get("stderr_tail")):
                    print("    " + (rec.get("traceback") or rec.get("stderr_tail")).strip().replace("\n", "\n    "), flush=True)
    env["wall_s"] = time.monotonic() - t_start
    env["loadavg_end"] = loadavg()
    env["hangfree_fingerprint_end"] = hangfree_fingerprint()

    summaries = {}
    for w, m, *_ in ROWS:
        if w in workloads:
            for impl in impls:
                summaries[(w, impl, m)] = summarize(records, w, impl, m)
    tgt = targets(summaries, records)
    fails = failures(records)
    if env["hangfree_fingerprint_start"] != env["hangfree_fingerprint_end"]:
        fails.append("hangfree's files changed during the run (python/hangfree): the results mix versions")
    text = write_reports(out_base, env, records, summaries, tgt, impls, workloads, fails)
    title = f"hangfree benchmark, {env['date']}, {env['workers']} workers, {repeats} repeats" + (" (--quick)" if args.quick else "")
    try:
        write_chart(out_base + ".png", summaries, impls, title)
        chart = out_base + ".png"
    except Exception as e:  # noqa: BLE001
        chart = None
        fails.append(f"chart: {type(e).__name__}: {e}")
    print()
    print(text)
    print(f"written: {out_base}.md, {out_base}.json" + (f", {chart}" if chart else ""))
    if fails:
        print(f"\n{len(fails)} unexpected failure(s):", file=sys.stderr)
        for f in fails:
            print("  " + f, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
