#!/usr/bin/env python3
"""Per-job overhead of ``hangfree run`` against GNU parallel, ``xargs -P`` and rush.

    python3 bench/cli.py                      # full run: bench/results/cli.{md,json}
    python3 bench/cli.py --quick              # CI (< 1 min): bench/results/cli-quick.{md,json}
    python3 bench/cli.py --hangfree PATH --repeats 7 --workload true --tool hangfree --tool 'xargs -P'

Stdlib only. Each tool runs the same jobs from the same input file, one job per input
line, with the line appended to the command as its one argument:

- ``true``:   N jobs of ``true I``;
- ``sleep``:  N jobs of ``sleep 0.01`` (10 ms);
- ``output``: N jobs of ``cat F``, F a file of 100 lines (65,600 bytes); the tools'
  standard output goes to a file whose lines and bytes are counted and checked.

Every measurement is one run of one tool in its own session, under a time limit;
tools and workloads are interleaved within each repeat, the tools' order rotating from
one repeat to the next. Overhead per job is ``(wall - ideal) / jobs``, where ``ideal`` is
``jobs x duration / j`` (0 for ``true`` and ``cat``, whose run time is the overhead).
A tool that is not installed is skipped with a message, never a failure; the run exits
non-zero only when ``hangfree run`` fails (an error, a wrong count, the time limit, a
process left behind). See bench/README.md.
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

# A job of the output workload prints this many lines of this many bytes (newline
# included): 100 lines, 65,600 bytes (64 KiB and a little).
OUT_LINES = 100
OUT_LINE_BYTES = 656

SLEEP = 0.01

# workload: (label, the command, what each input line is, the job's own duration)
WORKLOADS = {
    "true": ("`true`", "true", "seq", 0.0),
    "sleep": (f"`sleep {SLEEP:g}` ({SLEEP * 1000:g} ms)", "sleep", "sleep", SLEEP),
    "output": (f"output: `cat` of {OUT_LINES} lines, {OUT_LINES * OUT_LINE_BYTES:,} bytes", "cat", "file", 0.0),
}
JOBS_FULL = {"true": 5000, "sleep": 1000, "output": 1000}
JOBS_QUICK = {"true": 300, "sleep": 200, "output": 200}

TOOLS = ["hangfree run", "xargs -P", "xargs -P sh -c", "GNU parallel", "rush"]

# The reference of the first target ("at most xargs -P"): the flavour that does
# the same work per job as hangfree and GNU parallel (a shell per job). The direct one is
# reported and checked too.
XARGS_REF = "xargs -P sh -c"


# ----- environment ------------------------------------------------------------------


# The machine's description and the git revision, as bench/run.py gives them.
from run import cpu_model, git_rev  # noqa: E402


def loadavg():
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def first_line(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"? ({type(e).__name__})"


def find_hangfree(given):
    """The binary to measure: --hangfree, else the release build of this tree (under
    $CARGO_TARGET_DIR or target/), else `hangfree` on PATH."""
    if given:
        return os.path.abspath(given) if os.path.exists(given) else shutil.which(given)
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "hangfree"))
    candidates.append(os.path.join(ROOT, "target", "release", "hangfree"))
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    return shutil.which("hangfree")


def find_rush():
    """shenwei356/rush, if on PATH. Debian's `rush` package is GNU Rush, a restricted
    shell for sftp/scp accounts: a different program, refused here."""
    path = shutil.which("rush")
    if not path:
        return None, ("not installed: shenwei356/rush (Go) is in none of the registries this machine "
                      "reaches (Debian's `rush` is GNU Rush, a restricted shell; PyPI's and crates.io's "
                      "`rush` are unrelated projects)")
    try:
        p = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        text = p.stdout + p.stderr
    except Exception:  # noqa: BLE001
        text = ""
    if "shenwei356" not in text and "parallelly" not in text.lower():
        return None, f"{path} is not shenwei356/rush (Debian's `rush` is GNU Rush, a restricted shell)"
    return path, None


def tools(hangfree):
    """Each tool's argv for a command (the input line is appended as its argument), or
    why it is skipped."""
    found, skipped = {}, {}
    if hangfree:
        found["hangfree run"] = lambda cmd, j: [hangfree, "run", "-j", str(j), cmd]
    else:
        skipped["hangfree run"] = "no binary: build it (cargo build --release -p hangfree-cli) or pass --hangfree PATH"
    if shutil.which("xargs"):
        found["xargs -P"] = lambda cmd, j: ["xargs", "-P", str(j), "-n", "1", "-d", "\n", cmd]
        found["xargs -P sh -c"] = lambda cmd, j: ["xargs", "-P", str(j), "-n", "1", "-d", "\n", "sh", "-c", f'{cmd} "$1"', "sh"]
    else:
        skipped["xargs -P"] = skipped["xargs -P sh -c"] = "xargs not installed"
    if shutil.which("parallel") and "GNU parallel" in first_line(["parallel", "--version"]):
        found["GNU parallel"] = lambda cmd, j: ["parallel", "--will-cite", "-j", str(j), cmd]
    else:
        skipped["GNU parallel"] = "not installed (Debian: apt-get install parallel)"
    rush, why = find_rush()
    if rush:
        found["rush"] = lambda cmd, j: [rush, "-j", str(j), f"{cmd} {{}}"]
    else:
        skipped["rush"] = why
    return found, skipped


def tool_versions(found, hangfree):
    out = {}
    if "hangfree run" in found:
        out["hangfree run"] = f"{first_line([hangfree, '--version'])} ({hangfree})"
    if "xargs -P" in found:
        out["xargs -P"] = first_line(["xargs", "--version"])
    if "GNU parallel" in found:
        out["GNU parallel"] = first_line(["parallel", "--version"])
    if "rush" in found:
        out["rush"] = first_line([shutil.which("rush"), "--version"])
    out["sh"] = os.path.realpath(shutil.which("sh") or "sh")
    return out


# ----- inputs ---------------------------------------------------------------------------


def make_inputs(tmp, jobs):
    data = os.path.join(tmp, "lines.txt")
    line = b"x" * (OUT_LINE_BYTES - 1) + b"\n"
    with open(data, "wb") as f:
        f.write(line * OUT_LINES)
    paths = {}
    for w, n in jobs.items():
        kind = WORKLOADS[w][2]
        items = {"seq": [str(i) for i in range(1, n + 1)], "sleep": [f"{SLEEP:g}"] * n, "file": [data] * n}[kind]
        paths[w] = os.path.join(tmp, f"{w}.in")
        with open(paths[w], "w") as f:
            f.write("".join(i + "\n" for i in items))
    return paths


def expected_output(workload, n):
    """(lines, bytes) every tool must print for n jobs."""
    if workload == "output":
        return n * OUT_LINES, n * OUT_LINES * OUT_LINE_BYTES
    return 0, 0


def count_output(path):
    lines = size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            size += len(chunk)
    return lines, size


# ----- one measurement ---------------------------------------------------------------------


# The measurement's session, killed by pid, never by name: the same as bench/run.py's.
from run import kill_session, session_members  # noqa: E402


def measure(argv, stdin_path, tmp, limit, env):
    """Runs argv once; returns wall and CPU time (the whole tree's, as reaped) or an error.

    Output files are opened O_APPEND: xargs's jobs write to the shared stdout at once,
    and without it `cat` copies with copy_file_range at the shared offset and two jobs'
    output can overwrite each other.
    """
    out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    for p in (out_path, err_path):
        if os.path.exists(p):
            os.unlink(p)
    with open(stdin_path, "rb") as stdin, open(out_path, "ab") as out, open(err_path, "ab") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err, env=env, cwd=tmp, start_new_session=True)
        deadline = t0 + limit
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - t0
                break
            if time.perf_counter() > deadline:
                kill_session(proc.pid)
                pid, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
                timed_out = True
                break
            time.sleep(0.002)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Anything left in the session (a job or worker that outlived the tool) is a failure.
    strays = [p for p in session_members(proc.pid) if p != proc.pid]
    if strays:
        time.sleep(1)
        strays = session_members(proc.pid)
        kill_session(proc.pid)
    with open(err_path, "rb") as f:
        stderr = f.read(4000).decode(errors="replace").strip()
    res = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "status": proc.returncode}
    if timed_out:
        res["error"] = f"time limit ({limit:.0f} s) passed; killed"
    elif proc.returncode != 0:
        res["error"] = f"exit status {proc.returncode}: {stderr[:300]}"
    elif strays:
        res["error"] = f"{len(strays)} process(es) left in its session"
    res["lines"], res["bytes"] = count_output(out_path)
    os.unlink(out_path)
    return res


# ----- summary and report ---------------------------------------------------------------


def fmt_us(x):
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


def summarize(results, jobs, j):
    """Per workload and tool: medians and min-max of wall, overhead and CPU per job."""
    summary = {}
    for w, per_tool in results.items():
        n = jobs[w]
        ideal = n * WORKLOADS[w][3] / j
        summary[w] = {}
        for t, runs in per_tool.items():
            ok = [r for r in runs if "error" not in r]
            if not ok:
                summary[w][t] = {"error": runs[0].get("error", "no run") if runs else "no run"}
                continue
            over = [(r["wall"] - ideal) / n * 1e6 for r in ok]
            cpu = [r["cpu"] / n * 1e6 for r in ok]
            walls = [r["wall"] for r in ok]
            summary[w][t] = {
                "runs": len(ok),
                "failed_runs": len(runs) - len(ok),
                "wall_s": statistics.median(walls),
                "wall_min": min(walls),
                "wall_max": max(walls),
                "overhead_us": statistics.median(over),
                "overhead_min": min(over),
                "overhead_max": max(over),
                "cpu_us": statistics.median(cpu),
            }
    return summary


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def targets(summary):
    rows = []
    for w, per in summary.items():
        hf = per.get("hangfree run", {}).get("overhead_us")
        for ref, label in ((XARGS_REF, "≤ xargs -P (sh -c, the reference)"), ("xargs -P", "≤ xargs -P (direct exec)")):
            r = per.get(ref, {}).get("overhead_us")
            if hf is None or r is None:
                rows.append((w, label, "—", "not measured"))
            else:
                rows.append((w, label, f"{fmt_us(hf)} vs {fmt_us(r)} µs ({hf / r:.2f}×)", "met" if hf <= r else "missed"))
        p = per.get("GNU parallel", {}).get("overhead_us")
        if hf is None or p is None:
            rows.append((w, "≥ 10× below GNU parallel", "—", "not measured"))
        else:
            k = p / hf if hf > 0 else float("inf")
            rows.append((w, "≥ 10× below GNU parallel", f"{fmt_us(hf)} vs {fmt_us(p)} µs ({k:.1f}× below)", "met" if k >= 10 else "missed"))
    return rows


def report(meta, summary, jobs, found, skipped):
    L = []
    L.append("# `hangfree run` against GNU parallel, xargs -P and rush: per-job overhead")
    L.append("")
    L.append(f"{meta['date']}; `{meta['command']}`; {meta['repeats']} repeat(s), -j {meta['j']}; "
             f"load average (1, 5, 15 min) {meta['load_start']} at start, {meta['load_end']} at end; "
             f"{meta['cpus']} CPUs ({meta['cpu']}); {meta['platform']}; git {meta['git']}.")
    L.append("")
    L.append("Overhead per job = (wall − ideal) / jobs, ideal = jobs × the job's duration / j; "
             "median over the repeats, min–max in brackets; CPU is the whole tree's user+system time per job. "
             "Ratios are of the medians (below 1: less overhead than the reference). "
             "− xargs -P is the median overhead less `xargs -P`'s (direct exec): what the tool adds to starting "
             "each job's program, which no tool can avoid.")
    L.append("")
    for t, why in skipped.items():
        L.append(f"- **{t}: skipped** — {why}.")
    if skipped:
        L.append("")
    for w, per in summary.items():
        label = WORKLOADS[w][0]
        L.append(f"## {label}, {jobs[w]:,} jobs")
        L.append("")
        L.append("| tool | wall (s) | overhead per job (µs) | CPU per job (µs) | − xargs -P (µs) | ÷ xargs -P | ÷ xargs -P sh -c | ÷ GNU parallel |")
        L.append("|---|---|---|---|---|---|---|---|")
        refs = [per.get(r, {}).get("overhead_us") for r in ("xargs -P", XARGS_REF, "GNU parallel")]
        for t in TOOLS:
            if t not in per:
                continue
            s = per[t]
            if "error" in s:
                L.append(f"| {t} | failed: {s['error']} | | | | | | |")
                continue
            rs = [ratio(s["overhead_us"], r) for r in refs]
            cells = ["—" if r is None else f"{r:.2f}" for r in rs]
            above = "—" if refs[0] is None else f"{s['overhead_us'] - refs[0]:+,.0f}"
            fail = f" ({s['failed_runs']} run(s) failed)" if s["failed_runs"] else ""
            L.append(
                f"| {t}{fail} | {s['wall_s']:.2f} ({s['wall_min']:.2f}–{s['wall_max']:.2f}) "
                f"| **{fmt_us(s['overhead_us'])}** ({fmt_us(s['overhead_min'])}–{fmt_us(s['overhead_max'])}) "
                f"| {fmt_us(s['cpu_us'])} | {above} | {cells[0]} | {cells[1]} | {cells[2]} |"
            )
        L.append("")
    L.append("## Targets (issue 15)")
    L.append("")
    L.append("| workload | target | hangfree vs reference (median overhead per job) | |")
    L.append("|---|---|---|---|")
    for w, label, val, verdict in targets(summary):
        L.append(f"| {w} | {label} | {val} | {verdict} |")
    L.append("")
    L.append("## Tools")
    L.append("")
    for t, v in meta["versions"].items():
        L.append(f"- {t}: {v}")
    L.append("")
    L.append("## Method")
    L.append("")
    L.append("- Each job is one input line appended to the command as its argument: `true I`, `sleep 0.01`, "
             f"`cat F` (F: {OUT_LINES} lines of {OUT_LINE_BYTES} bytes). The same input file goes to every tool's stdin; "
             "its stdout goes to a file whose lines and bytes are checked against jobs × the job's output "
             "(a run that prints anything else counts as failed); stderr to another file.")
    L.append("- `hangfree run -j 2 CMD` and `parallel --will-cite -j 2 CMD` (with `PARALLEL_SHELL=/bin/sh`) run each job "
             "through `sh -c`, with output grouped per job (captured, then copied out whole). "
             "`xargs -P 2 -n 1 -d '\\n' CMD` execs the command directly, and its jobs write straight to the shared "
             "stdout (no grouping); `xargs -P 2 -n 1 -d '\\n' sh -c 'CMD \"$1\"' sh` adds the shell per job, "
             f"the same work as hangfree and GNU parallel do per job: it is the reference of the target "
             "\"at most xargs -P\" (the direct one is checked too). `sh` is dash here, for which `true` is a builtin: "
             "under `sh -c`, `true` execs nothing.")
    L.append("- One measurement is one run of one tool in a new session, timed from spawn to reaping (tool start-up "
             "included: pool and worker start for hangfree, Perl's start for GNU parallel). Within a repeat, every "
             "workload runs every tool, the tools' order rotating from one repeat to the next. A run past its time "
             "limit is killed; processes left in its session count as a failure.")
    L.append("")
    return "\n".join(L)


# ----- main -------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few hundred jobs, one repeat (CI: < 1 min)")
    ap.add_argument("--hangfree", help="the hangfree binary (default: target/release/hangfree, then PATH)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per workload and tool (default 5; --quick: 1)")
    ap.add_argument("-j", type=int, default=2, help="jobs at once (default 2)")
    ap.add_argument("--jobs", type=int, default=None, help="jobs per workload (default 5000 true, 1000 sleep, 1000 output)")
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS), help="only these workloads (repeatable)")
    ap.add_argument("--tool", action="append", choices=TOOLS, help="only these tools (repeatable)")
    ap.add_argument("--out", default=None, help="output path without extension (default bench/results/cli; --quick: cli-quick)")
    args = ap.parse_args(argv)

    repeats = args.repeats or (1 if args.quick else 5)
    base = JOBS_QUICK if args.quick else JOBS_FULL
    workloads = args.workload or list(WORKLOADS)
    jobs = {w: args.jobs or base[w] for w in workloads}
    out = args.out or os.path.join(HERE, "results", "cli-quick" if args.quick else "cli")

    hangfree = find_hangfree(args.hangfree)
    found, skipped = tools(hangfree)
    if args.tool:
        found = {t: f for t, f in found.items() if t in args.tool}
        skipped = {t: w for t, w in skipped.items() if t in args.tool}
    for t, why in skipped.items():
        print(f"skipped: {t}: {why}", flush=True)
    if not found:
        print("no tool to measure", file=sys.stderr)
        return 2
    names = [t for t in TOOLS if t in found]

    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": shlex.join(["python3", os.path.relpath(__file__, ROOT)] + (sys.argv[1:] if argv is None else argv)),
        "repeats": repeats,
        "j": args.j,
        "jobs": jobs,
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "git": git_rev(),
        "versions": tool_versions(found, hangfree),
        "load_start": loadavg(),
    }
    # GNU parallel runs jobs in the shell it was started from unless told: the same sh as
    # the others.
    env = dict(os.environ, PARALLEL_SHELL="/bin/sh", LC_ALL="C")
    results = {w: {t: [] for t in names} for w in workloads}
    failed = False
    with tempfile.TemporaryDirectory(prefix="hangfree-clibench-") as tmp:
        inputs = make_inputs(tmp, jobs)
        for rep in range(repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for w in workloads:
                n = jobs[w]
                cmd = WORKLOADS[w][1]
                limit = 30 + n * 0.1
                want = expected_output(w, n)
                for t in order:
                    r = measure(found[t](cmd, args.j), inputs[w], tmp, limit, env)
                    if "error" not in r and (r["lines"], r["bytes"]) != want:
                        r["error"] = f"printed {r['lines']} lines, {r['bytes']} bytes; expected {want[0]}, {want[1]}"
                    results[w][t].append(r)
                    ideal = n * WORKLOADS[w][3] / args.j
                    what = r.get("error") or f"{r['wall']:.2f} s, {(r['wall'] - ideal) / n * 1e6:,.0f} µs/job over ideal"
                    print(f"[{rep + 1}/{repeats}] {w:6} {t:15} {what}  (load {loadavg()[0] if loadavg() else '?'})", flush=True)
                    if "error" in r and t == "hangfree run":
                        failed = True
    meta["load_end"] = loadavg()
    summary = summarize(results, jobs, args.j)
    md = report(meta, summary, jobs, found, skipped)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(md)
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, "skipped": skipped, "summary": summary, "targets": targets(summary), "runs": results}, f, indent=1)
    print()
    print(md)
    print(f"wrote {os.path.relpath(out, ROOT)}.md and .json")
    if failed:
        print("FAILED: hangfree run did not complete every workload correctly", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
