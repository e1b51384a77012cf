#!/usr/bin/env python3
"""hangfree on real work, against multiprocessing, concurrent.futures and loky.

    .venv/bin/pip install -r bench/requirements-realwork.txt   # numpy, Pillow, scikit-learn
    .venv/bin/python bench/realwork.py            # full run: bench/results/realwork.{md,json}
    .venv/bin/python bench/realwork.py --quick    # CI: small data, one repeat, < 2 min

Seven workloads (hashing files, parsing JSON, word counts, numpy, Pillow, scikit-learn,
tiny tasks) over data made from a fixed seed, each measured cold (imports, new pool,
first map, close+join) and warm (a second map on the same pool). Every measurement is a
fresh interpreter in its own session, started by this script with ``--child``;
implementations are interleaved round-robin and the order rotates between repeats. A
workload whose library is missing is skipped. See bench/README.md.
"""

import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _import_listed(var):
    """Imports the modules that environment variable ``var`` names; the ms it took."""
    t0 = time.perf_counter()
    for name in filter(None, os.environ.get(var, "").split(",")):
        importlib.import_module(name)
    return (time.perf_counter() - t0) * 1000


# A measurement's script imports at its top what a user's script would: the pool's
# library, then the workload's own. Workers that import the script (spawn, forkserver,
# loky, hangfree's fork server) import them too, as they would a user's script.
POOL_IMPORT_MS = _import_listed("REALWORK_POOL_IMPORTS")
TASK_IMPORT_MS = _import_listed("REALWORK_TASK_IMPORTS")

TASK_TIMEOUT = 30.0
IMPLS = [
    "hangfree.Pool",
    f"hangfree.Pool(task_timeout={TASK_TIMEOUT:g})",
    "hangfree.ProcessPoolExecutor",
    f"hangfree.ProcessPoolExecutor(task_timeout={TASK_TIMEOUT:g})",
    "mp.Pool(fork)",
    "mp.Pool(forkserver)",
    "mp.Pool(spawn)",
    "cf.ProcessPoolExecutor",
    "loky",
]
HANGFREE = [i for i in IMPLS if i.startswith("hangfree.")]
PEERS = [i for i in IMPLS if i not in HANGFREE]
METRICS = ["cold_ms", "warm_ms", "create_ms", "first_ms", "close_join_ms", "task_import_ms", "pool_import_ms"]


def pool_library(impl):
    """The module whose import a user pays for before making the pool: counted apart
    from pool creation, for every implementation alike (hangfree's package is lazy:
    ``hangfree.Pool`` imports ``hangfree.pool`` on first use)."""
    if impl.startswith("hangfree."):
        return "hangfree.executor" if is_executor(impl) else "hangfree.pool"
    if impl.startswith("mp.Pool"):
        return "multiprocessing.pool"
    if impl.startswith("cf."):
        return "concurrent.futures"
    return "loky"


def is_executor(impl):
    return "Executor" in impl or impl == "loky"


# ----- one measurement (the --child process) ---------------------------------------


def make_pool(impl, workers):
    if impl.startswith("hangfree."):
        import hangfree

        kw = {"task_timeout": TASK_TIMEOUT} if "task_timeout" in impl else {}
        return (hangfree.ProcessPoolExecutor if is_executor(impl) else hangfree.Pool)(workers, **kw)
    if impl.startswith("mp.Pool"):
        import multiprocessing

        return multiprocessing.get_context(impl[len("mp.Pool("):-1]).Pool(workers)
    if impl == "cf.ProcessPoolExecutor":
        import concurrent.futures

        return concurrent.futures.ProcessPoolExecutor(workers)
    import loky

    return loky.get_reusable_executor(max_workers=workers)


def default_chunks(n, workers):
    """multiprocessing.Pool's default chunksize: ceil(n / (4 * workers))."""
    c, extra = divmod(n, workers * 4)
    return c + 1 if extra else max(c, 1)


def run_workload(pool, impl, w, items, workers):
    """One pass, in the shape a user of each API writes: a Pool's ``map`` (its own default
    chunks) or ``imap_unordered``; an executor's ``map`` (given the Pool's chunksize, so
    that the split is the same) or ``submit`` + ``as_completed``."""
    task = w["task"]
    if w["api"] == "map":
        if is_executor(impl):
            results = pool.map(task, items, chunksize=default_chunks(len(items), workers))
        else:
            results = pool.map(task, items)
    elif is_executor(impl):
        from concurrent.futures import as_completed

        results = (f.result() for f in as_completed([pool.submit(task, x) for x in items]))
    else:
        results = pool.imap_unordered(task, items)
    return w["collect"](results)


def close_pool(pool, impl):
    if is_executor(impl):
        pool.shutdown(wait=True)
    else:
        pool.close()
        pool.join()


def child(impl, name, root, workers):
    """Measures ``name`` on ``impl`` and prints ``@@``-prefixed JSON events: ``phase``
    (the step entered, for the watchdog's report) and ``result``."""
    import json
    import traceback

    import realwork_tasks as rt

    def emit(event, **fields):
        sys.stdout.write("@@" + json.dumps(dict(event=event, **fields)) + "\n")
        sys.stdout.flush()

    w = rt.WORKLOADS[name]
    try:
        manifest, items = rt.load(name, root)
        ms = {"pool_import_ms": POOL_IMPORT_MS, "task_import_ms": TASK_IMPORT_MS}
        clock = time.perf_counter
        emit("phase", name="create")
        t0 = clock()
        pool = make_pool(impl, workers)
        ms["create_ms"] = (clock() - t0) * 1000
        emit("phase", name="first map")
        t0 = clock()
        first = run_workload(pool, impl, w, items, workers)
        ms["first_ms"] = (clock() - t0) * 1000
        emit("phase", name="warm map")
        t0 = clock()
        warm = run_workload(pool, impl, w, items, workers)
        ms["warm_ms"] = (clock() - t0) * 1000
        emit("phase", name="close+join")
        t0 = clock()
        close_pool(pool, impl)
        ms["close_join_ms"] = (clock() - t0) * 1000
        ms["cold_ms"] = (ms["pool_import_ms"] + ms["task_import_ms"] + ms["create_ms"] + ms["first_ms"]
                         + ms["close_join_ms"])
        rt.check(name, first, manifest)
        rt.check(name, warm, manifest)
        emit("result", status="ok", metrics=ms)
    except BaseException as e:
        emit("result", status="error", metrics={}, note=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    # Leave at once: the outcome is out, and a broken pool's exit hooks may hang.
    os._exit(0)


# ----- the run (the parent process) ------------------------------------------------


def blas_env(threads):
    """One BLAS/OpenMP thread per worker unless told otherwise: with the libraries'
    default (one thread per CPU in every worker) the workers' threads fight over the
    CPUs, and the same SVD map took 0.46–1.03 s under mp.Pool(fork) instead of 0.09 s:
    that would measure the oversubscription, not the pool."""
    if threads == 0:
        return {}
    return {v: str(threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def measure(impl, name, root, workers, limit):
    """Runs one ``--child`` in a new session; kills the session (by pid, never by name)
    if it passes ``limit`` seconds, and whatever it leaves behind."""
    import json
    import shutil
    import subprocess
    import tempfile

    import realwork_tasks as rt
    from run import kill_session, session_members

    tmpdir = tempfile.mkdtemp(prefix="hangfree-realwork-")
    out_path, err_path = os.path.join(tmpdir, "stdout"), os.path.join(tmpdir, "stderr")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", TMPDIR=tmpdir,
               REALWORK_POOL_IMPORTS=pool_library(impl),
               REALWORK_TASK_IMPORTS=",".join(("realwork_tasks",) + rt.WORKLOADS[name]["imports"]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, name, root, "--workers", str(workers)]
    started = time.monotonic()
    with open(out_path, "a") as out_w, open(err_path, "a") as err_w:
        proc = subprocess.Popen(cmd, cwd=os.path.dirname(HERE), stdout=out_w, stderr=err_w,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        proc.wait(timeout=limit)
        killed = False
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        proc.wait()
        killed = True
    wall = time.monotonic() - started
    stray = session_members(proc.pid)
    t_end = time.monotonic() + 2.0
    while stray and time.monotonic() < t_end:
        time.sleep(0.02)
        stray = session_members(proc.pid)
    if stray:
        kill_session(proc.pid)

    events = []
    with open(out_path) as f:
        for line in f:
            if line.startswith("@@"):
                try:
                    events.append(json.loads(line[2:]))
                except ValueError:
                    pass
    with open(err_path) as f:
        stderr_tail = f.read()[-1500:]
    shutil.rmtree(tmpdir, ignore_errors=True)
    phases = [e["name"] for e in events if e.get("event") == "phase"]
    result = next((e for e in events if e.get("event") == "result"), None)
    rec = {"impl": impl, "workload": name, "wall_s": round(wall, 3), "stray_processes": len(stray)}
    if killed:
        where = phases[-1] if phases else "imports"
        rec.update(status="timeout", metrics={}, note=f"killed {limit:g} s after start, in '{where}'")
    elif result is None:
        rec.update(status="error", metrics={}, note=f"exited with {proc.returncode} without a result",
                   stderr_tail=stderr_tail)
    else:
        rec.update(status=result["status"], metrics=result["metrics"], note=result.get("note"))
        if result.get("traceback"):
            rec["traceback"] = result["traceback"]
    return rec


def summarize(records):
    import statistics

    out = {}
    for r in records:
        for m in METRICS:
            out.setdefault((r["workload"], r["impl"], m), {"n": 0, "values": []})
            s = out[(r["workload"], r["impl"], m)]
            s["n"] += 1
            if r["status"] == "ok":
                s["values"].append(r["metrics"][m])
    for s in out.values():
        v = s["values"]
        if v:
            s.update(median=statistics.median(v), min=min(v), max=max(v))
    return out


def best_peer(summaries, name, metric):
    """(median, impl) of the fastest peer that completed every repeat, or None."""
    cands = [(s["median"], p) for p in PEERS
             if (s := summaries.get((name, p, metric))) and s["values"] and len(s["values"]) == s["n"]]
    return min(cands) if cands else None


def spread(summaries, name, metric, impls):
    """The median, over the implementations, of (max − min) / median of their repeats:
    how far apart two runs of one implementation typically land in this workload."""
    import statistics

    rel = [(s["max"] - s["min"]) / s["median"] for i in impls
           if (s := summaries.get((name, i, metric))) and s.get("median") and len(s["values"]) > 1]
    return statistics.median(rel) if rel else None


def ratios(summaries, names, impls):
    out = {}
    for name in names:
        for metric in ("cold_ms", "warm_ms"):
            best = best_peer(summaries, name, metric)
            for i in impls:
                s = summaries.get((name, i, metric))
                if best and s and s.get("median") is not None:
                    out[(name, i, metric)] = {"ratio": s["median"] / best[0], "best_peer": best[1],
                                              "best_peer_ms": best[0]}
    return out


def fmt_ms(x):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(s):
    if not s or s["n"] == 0:
        return "–"
    if not s["values"]:
        return "failed"
    text = f"{fmt_ms(s['median'])} ({fmt_ms(s['min'])}–{fmt_ms(s['max'])})"
    if len(s["values"]) < s["n"]:
        text += f" [{s['n'] - len(s['values'])}/{s['n']} failed]"
    return text


def one_line(text, limit=400):
    """A note fit for a Markdown list item (the JSON keeps it whole)."""
    text = " ⏎ ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit] + " …"


def ratio_cell(r, impl=None, bold_over=1.05):
    if r is None:
        return "–"
    if impl == r["best_peer"]:
        return "1 (best peer)"
    text = f"{r['ratio']:.2f}×"
    return f"**{text}**" if impl in HANGFREE and r["ratio"] > bold_over else text


METHOD = """\
## Method

- Each measurement is a fresh interpreter (`bench/realwork.py --child`), started in its own
  session. Its script imports at its top what a user's script would, each group timed:
  the pool's library (`hangfree`, `multiprocessing.pool`, `concurrent.futures` or `loky`),
  then the workload's libraries and the task module `bench/realwork_tasks.py`. Both
  count in cold: a library that loads its parts on first use (hangfree, the
  `concurrent.futures` executor) pays for them in pool creation instead. Workers
  that import the script (spawn, forkserver, loky, hangfree's fork server or its workers)
  import the same, as they would a user's script; forked workers inherit them.
- BLAS and OpenMP libraries get {blas} thread(s) per process (`OPENBLAS_NUM_THREADS`,
  `OMP_NUM_THREADS`, `MKL_NUM_THREADS`; `--blas-threads 0` leaves their default, one per
  CPU in every worker, under which the workers' threads fight over the CPUs and the
  numpy numbers measure that).
- Then, each step timed: the pool is made (`hangfree.Pool({w})`, `hangfree.ProcessPoolExecutor({w})`,
  each also with `task_timeout={tt:g}`; `multiprocessing.get_context(m).Pool({w})` for fork,
  forkserver and spawn; `concurrent.futures.ProcessPoolExecutor({w})` (fork, the default on
  Linux before Python 3.14); `loky.get_reusable_executor(max_workers={w})`), the workload
  runs once (first map), once more on the same pool (warm), and the pool is closed and
  joined (`close(); join()`; executors: `shutdown(wait=True)`). **cold** = both imports
  + pool creation + first map + close+join; **warm** = the second map. The data
  (read from files before any clock starts) and the results are the same for every
  implementation; both passes' results are checked against a run in one process.
- API shape per kind: a Pool runs `map(f, items)` with its own default chunksize or
  `imap_unordered(f, items)` (chunksize 1); an executor runs `map(f, items,
  chunksize=c)` with `c` = the Pool's default (`ceil(n / (4 × workers))`), or
  `submit` per item + `as_completed`. The results are consumed inside the timed section
  (word counts: merged into one `Counter` as they arrive).
- The peers run without a per-task timeout (none of them offers one); hangfree is
  measured both without and with `task_timeout={tt:g}`, and each is compared with the
  best peer's median (the fastest median among the peers that completed every repeat).
- Implementations are interleaved round-robin within each repeat, the starting one
  rotating between repeats; cells show the median over {r} repeat(s) with min–max.
  "spread" is the median over the implementations of (max − min) / median of their
  repeats: ratios within about that of 1 are ties.
- "serial" is the same workload run by `map` in one process with its libraries loaded:
  the work itself, without a pool.
- A measurement that runs past {limit:g} s is killed (its process group and every process
  in its session, by pid, never by name) and reported as a timeout; processes left in its
  session afterwards are waited for 2 s, then killed and counted.
- Workloads (data from seed 14, made once per run in a temporary directory):
{workloads}
"""


def write_reports(out_base, env, records, names, skipped, impls, fails, peer_fails):
    import json

    import realwork_tasks as rt

    summaries = summarize(records)
    rat = ratios(summaries, names, impls)
    hf = [i for i in impls if i in HANGFREE]
    md = ["# hangfree real-work benchmark\n"]
    if env["quick"]:
        md.append(f"**--quick run: small data, {env['repeats']} repeat(s); these numbers only show that "
                  "every workload completes.**\n")
    md.append(f"- date: {env['date']}")
    md.append(f"- machine: {env['nproc']} CPUs (`nproc`), {env['cpu_model']}; {env['platform']}")
    md.append(f"- Python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
              + f"; hangfree at git {env['git']}")
    md.append(f"- command: `{env['command']}`")
    md.append(f"- workers: {env['workers']}, repeats: {env['repeats']}, wall time: {env['wall_s']:.0f} s "
              f"(data preparation {env['prepare_s']:.0f} s)")
    la0, la1 = env.get("loadavg_start"), env.get("loadavg_end")
    if la0 and la1:
        md.append(f"- load average (1/5/15 min) at start {la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}, at end "
                  f"{la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f} (the run itself keeps {env['workers']} workers busy)"
                  + (" — **the machine was busy before the run: re-measure on a quiet one**"
                     if la0[0] > 0.5 * env["nproc"] else ""))
    if env["hangfree_fingerprint_start"] != env["hangfree_fingerprint_end"]:
        md.append("- **hangfree's files (python/hangfree: .py and the extension) changed during this run: "
                  "the hangfree numbers mix versions; run again**")
    md.append("")

    md.append("## hangfree's median ÷ the best peer's\n")
    md.append("Ratio > 1: hangfree slower; **bold**: over 1.05. Spread: the typical (max − min) / "
              "median of one implementation's repeats in that workload (the noise; ratios within "
              "about that of 1 are ties).\n")
    short = {i: i.replace("ProcessPoolExecutor", "PPE").replace("hangfree.", "").replace("task_timeout=", "tt=") for i in hf}
    md.append("| workload | " + " | ".join(f"{short[i]} cold | {short[i]} warm" for i in hf)
              + " | best peer cold | best peer warm | spread cold / warm |")
    md.append("|---|" + "---|---|" * len(hf) + "---|---|---|")
    for name in names:
        cells = []
        for i in hf:
            cells += [ratio_cell(rat.get((name, i, "cold_ms")), i), ratio_cell(rat.get((name, i, "warm_ms")), i)]
        bp = [best_peer(summaries, name, m) for m in ("cold_ms", "warm_ms")]
        bp = [f"{b[1]} ({fmt_ms(b[0])} ms)" if b else "–" for b in bp]
        sp = [spread(summaries, name, m, impls) for m in ("cold_ms", "warm_ms")]
        sp = " / ".join("–" if x is None else f"{x * 100:.0f} %" for x in sp)
        md.append(f"| {name} | " + " | ".join(cells) + f" | {bp[0]} | {bp[1]} | {sp} |")
    for name, why in skipped.items():
        md.append(f"| {name} | skipped: {why} |" + " |" * (2 * len(hf) + 2))
    md.append("")

    md.append("## Pool creation and close+join\n")
    md.append("Issue 14's other targets: creating a pool (its library's import counted apart, as for "
              "every implementation) no slower than `mp.Pool(fork)`, and close+join ≤ 20 ms whatever "
              "the workers imported. Medians in ms.\n")
    fronts = [i for i in ("hangfree.Pool", "hangfree.ProcessPoolExecutor") if i in impls]
    md.append("| workload | " + " | ".join(f"{short[i]} creation" for i in fronts)
              + " | mp.Pool(fork) creation | " + " | ".join(f"{short[i]} close+join" for i in fronts) + " |")
    md.append("|---|" + "---|" * (2 * len(fronts) + 1))

    def med_ms(name, impl, metric):
        x = summaries.get((name, impl, metric))
        return fmt_ms(x["median"]) if x else "–"

    for name in names:
        md.append(f"| {name} | " + " | ".join(med_ms(name, i, "create_ms") for i in fronts)
                  + f" | {med_ms(name, 'mp.Pool(fork)', 'create_ms')} | "
                  + " | ".join(med_ms(name, i, "close_join_ms") for i in fronts) + " |")
    md.append("")

    md.append("## Per workload (ms, median (min–max))\n")
    for name in [n for n in rt.WORKLOADS if n in names or n in skipped]:
        md.append(f"### {name}: {rt.title(name, env['quick'])}\n")
        if name in skipped:
            md.append(f"skipped: {skipped[name]}\n")
            continue
        serial = env["serial_ms"].get(name)
        sp = [spread(summaries, name, m, impls) for m in ("cold_ms", "warm_ms")]
        md.append(f"serial (one process, no pool): {fmt_ms(serial)} ms; spread of repeats: cold "
                  + " / warm ".join("–" if x is None else f"{x * 100:.0f} %" for x in sp) + "\n")
        md.append("| implementation | cold | cold ÷ best peer | warm | warm ÷ best peer | pool creation "
                  "| first map | close+join | task-library imports | pool-library import |")
        md.append("|---|---|---|---|---|---|---|---|---|---|")
        for i in impls:
            s = {m: summaries.get((name, i, m)) for m in METRICS}
            md.append(f"| {i} | {cell(s['cold_ms'])} | {ratio_cell(rat.get((name, i, 'cold_ms')), i)} "
                      f"| {cell(s['warm_ms'])} | {ratio_cell(rat.get((name, i, 'warm_ms')), i)} "
                      f"| {cell(s['create_ms'])} | {cell(s['first_ms'])} | {cell(s['close_join_ms'])} "
                      f"| {cell(s['task_import_ms'])} | {cell(s['pool_import_ms'])} |")
        md.append("")

    notes = []
    for r in records:
        if r["status"] != "ok":
            notes.append(f"- {r['workload']} / {r['impl']} (repeat {r['repeat'] + 1}): {r['status']}: {one_line(r.get('note'))}")
    stray = {}
    for r in records:
        if r["stray_processes"]:
            stray.setdefault((r["workload"], r["impl"]), []).append(r["stray_processes"])
    for (w, i), v in sorted(stray.items()):
        notes.append(f"- {w} / {i}: processes left in the measurement's session after it ended, killed: {v}")
    if notes:
        md.append("## Notes\n")
        md.extend(notes)
        md.append("")
    if fails:
        md.append("## hangfree failures (the run exits non-zero)\n")
        md.extend(f"- {one_line(f)}" for f in fails)
        md.append("")
    if peer_fails:
        md.append("## Peer failures\n")
        md.extend(f"- {one_line(f)}" for f in peer_fails)
        md.append("")
    wl = "\n".join(f"  - **{n}**: {rt.title(n, env['quick'])}." for n in rt.WORKLOADS)
    md.append(METHOD.format(blas=env["blas_threads"], w=env["workers"], tt=TASK_TIMEOUT, r=env["repeats"], limit=env["limit_s"], workloads=wl))
    text = "\n".join(md)
    with open(out_base + ".md", "w") as f:
        f.write(text)
    with open(out_base + ".json", "w") as f:
        json.dump({"env": env, "skipped": skipped, "records": records,
                   "summary": [{"workload": w, "impl": i, "metric": m, **s} for (w, i, m), s in sorted(summaries.items())],
                   "ratios": [{"workload": w, "impl": i, "metric": m, **r} for (w, i, m), r in sorted(rat.items())],
                   "hangfree_failures": fails, "peer_failures": peer_fails}, f, indent=1)
    return text


def versions():
    from importlib import metadata

    out = {}
    for dist in ("hangfree", "loky", "numpy", "pillow", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main(argv=None):
    import argparse

    import realwork_tasks as rt

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data, one repeat (CI: < 2 min)")
    ap.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="measurements per workload and implementation (default 4; --quick: 1)")
    ap.add_argument("--impl", action="append", choices=IMPLS, help="only these implementations (repeatable)")
    ap.add_argument("--workload", action="append", choices=list(rt.WORKLOADS), help="only these workloads (repeatable)")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OPENBLAS/OMP/MKL_NUM_THREADS in each measurement (default 1; 0: the libraries' own default)")
    ap.add_argument("--out", default=None, help="output path without extension (default bench/results/realwork; --quick: realwork-quick)")
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "WORKLOAD", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child, args.workers)
    import datetime
    import platform
    import shutil
    import tempfile

    import run

    os.environ.update(blas_env(args.blas_threads))  # for the serial runs and every measurement
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 4)
    limit = 60.0 if args.quick else 240.0
    impls = args.impl or IMPLS
    names = args.workload or list(rt.WORKLOADS)
    skipped = {n: f"{m} not installed" for n in names if (m := rt.missing(n))}
    names = [n for n in names if n not in skipped]
    out_base = args.out or os.path.join(HERE, "results", "realwork-quick" if args.quick else "realwork")
    os.makedirs(os.path.dirname(os.path.abspath(out_base)), exist_ok=True)

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": run.cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "git": run.git_rev(),
        "command": run.command_line(),
        "workers": args.workers,
        "repeats": repeats,
        "quick": args.quick,
        "limit_s": limit,
        "task_timeout_s": TASK_TIMEOUT,
        "blas_threads": args.blas_threads or "library default",
        "loadavg_start": run.loadavg(),
        "hangfree_fingerprint_start": run.hangfree_fingerprint(),
    }
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}", flush=True)
    t_start = time.monotonic()
    data = tempfile.mkdtemp(prefix="hangfree-realwork-data-")
    records = []
    try:
        env["serial_ms"] = {}
        for name in names:
            t0 = time.monotonic()
            m = rt.prepare(name, os.path.join(data, name), args.quick)
            env["serial_ms"][name] = m["serial_ms"]
            print(f"prepared {name:14s} in {time.monotonic() - t0:5.1f} s (serial run {m['serial_ms']:.0f} ms)", flush=True)
        env["prepare_s"] = time.monotonic() - t_start
        total = repeats * len(names) * len(impls)
        for rep in range(repeats):
            shift = rep % len(impls)
            order = impls[shift:] + impls[:shift]
            for name in names:
                for impl in order:
                    rec = measure(impl, name, os.path.join(data, name), args.workers, limit)
                    rec["repeat"] = rep
                    records.append(rec)
                    ms = rec["metrics"]
                    brief = (f"cold {fmt_ms(ms['cold_ms'])} warm {fmt_ms(ms['warm_ms'])} create {fmt_ms(ms['create_ms'])} "
                             f"close+join {fmt_ms(ms['close_join_ms'])}") if rec["status"] == "ok" else rec.get("note")
                    print(f"[{len(records)}/{total}] rep {rep + 1} {name:14s} {impl:44s} {rec['status']:7s} {brief}", flush=True)
                    if rec["status"] == "error":
                        print("    " + (rec.get("traceback") or rec.get("stderr_tail") or "").strip().replace("\n", "\n    "), flush=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    env["wall_s"] = time.monotonic() - t_start
    env["loadavg_end"] = run.loadavg()
    env["hangfree_fingerprint_end"] = run.hangfree_fingerprint()

    fails, peer_fails = [], []
    for r in records:
        where = f"{r['workload']} / {r['impl']} (repeat {r['repeat'] + 1})"
        if r["status"] != "ok":
            (fails if r["impl"] in HANGFREE else peer_fails).append(f"{where}: {r['status']}: {r.get('note')}")
        elif r["impl"] in HANGFREE and r["stray_processes"]:
            fails.append(f"{where}: {r['stray_processes']} processes outlived the measurement")
    text = write_reports(out_base, env, records, names, skipped, impls, fails, peer_fails)
    print()
    print(text)
    print(f"written: {out_base}.md, {out_base}.json")
    if fails:
        print(f"\n{len(fails)} hangfree failure(s):", file=sys.stderr)
        for f in fails:
            print("  " + f, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
