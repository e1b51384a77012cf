"""Runs the article's three hanging programs twice — under multiprocessing and under
hangfree, where only the import line differs — and prints what happened to each.

Each run is a subprocess in its own session; one still running after the watchdog's
limit is reported as hung and killed (its whole process group, workers included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "examples").glob("seed*.py"))
WATCHDOG = float(os.environ.get("HANGFREE_DEMO_WATCHDOG", "15"))


def run(source: str) -> tuple[str, float, str]:
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-c", source],
        cwd=ROOT / "examples",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = p.communicate(timeout=WATCHDOG)
    except subprocess.TimeoutExpired:
        # The program hung: stop it and every worker it left in its session.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            time.sleep(0.3)
        out, _ = p.communicate()
        _reap_session(p.pid)
        return f"hung, killed after {WATCHDOG:.0f} s", time.monotonic() - t0, out
    elapsed = time.monotonic() - t0
    lines = [l for l in out.strip().splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    status = "finished" if p.returncode == 0 else f"error (exit {p.returncode})"
    return f"{status}: {last[:110]}", elapsed, out


def _reap_session(sid: int) -> None:
    # multiprocessing's workers may have left the group when their parent died; find any
    # process still in the session we created and kill it by pid.
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            try:
                os.kill(int(d.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    rows = []
    for seed in SEEDS:
        hangfree_src = seed.read_text()
        stdlib_src = hangfree_src.replace("import hangfree as mp", "import multiprocessing as mp")
        print(f"running {seed.name} under multiprocessing (watchdog {WATCHDOG:.0f} s) ...", flush=True)
        std = run(stdlib_src)
        print(f"running {seed.name} under hangfree ...", flush=True)
        hf = run(hangfree_src)
        rows.append((seed.name, std, hf))
    print()
    for name, (s_out, s_t, _), (h_out, h_t, _) in rows:
        print(f"{name}")
        print(f"  multiprocessing  {s_t:6.2f} s  {s_out}")
        print(f"  hangfree         {h_t:6.2f} s  {h_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
