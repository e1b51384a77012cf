"""A pool's fork server is kept for the next pool of the same process: the second pool
forks its workers from the interpreter the first one started, which imported the script
once; a pool with another environment gets a server of its own; a kept server dies with
the process even when the interpreter never runs its exit handlers. Real processes in
scripts of their own, time-bounded."""

from __future__ import annotations

import os
import time

import helpers


SERVERS = """
    import logging, os, re, sys
    import hangfree as mp
    from concurrent.futures import wait

    with open(os.environ["IMPORT_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")

    def pid(_):
        return os.getpid()

    def servers(records):
        found = []
        for r in records:
            m = re.search(r"(started|took) the fork server (\\d+)", r.getMessage())
            if m:
                found.append((m.group(1), int(m.group(2))))
        return found

    if __name__ == "__main__":
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("hangfree").addHandler(handler)
        logging.getLogger("hangfree").setLevel(logging.DEBUG)
        seen = []
        for make in (lambda: mp.Pool(2), lambda: mp.Pool(2, initializer=print, initargs=("",)),
                     lambda: mp.ProcessPoolExecutor(2)):
            with make() as p:
                workers = set(p.map(pid, range(6), chunksize=1))
            seen.append(servers(records))
            records.clear()
        os.environ["SOMETHING_NEW"] = "1"
        with mp.Pool(2) as p:
            p.map(pid, range(2))
        seen.append(servers(records))
        print(seen)
        with open(os.environ["IMPORT_LOG"]) as f:
            imported = [int(line) for line in f]
        print(len(imported))
"""


def test_the_next_pool_takes_the_kept_server_and_another_environment_gets_its_own(tmp_path):
    script = helpers.write_script(tmp_path, SERVERS)
    env = helpers.script_env(IMPORT_LOG=str(tmp_path / "imports"))
    res, _ = helpers.run_python([str(script)], timeout=60, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    seen, imports = res.stdout.splitlines()[-2:]
    seen = eval(seen)  # a list of lists of (str, int) tuples printed by the script
    (first,) = seen[0]
    assert first[0] == "started"
    server = first[1]
    # An initializer and the executor change nothing the server holds: both take it.
    assert seen[1] == [("took", server)] and seen[2] == [("took", server)], seen
    # A changed environment would not reach workers forked by the old server.
    ((how, other),) = seen[3]
    assert how == "started" and other != server, seen
    # The main process and the two servers imported the script; no worker did.
    assert int(imports) == 3


EXIT_WITHOUT_CLEANUP = """
    import os, sys
    import hangfree as mp

    def pid(_):
        return os.getpid()

    if __name__ == "__main__":
        with mp.Pool(1) as p:
            p.map(pid, range(2))
        # The ended pool's supervisor hands its server over as it ends, after the with
        # block returned: look for a while.
        import time
        deadline = time.monotonic() + 5
        while True:
            kids = []
            for tid in os.listdir("/proc/self/task"):
                try:  # the ended pool's threads may still be ending
                    with open(f"/proc/self/task/{tid}/children") as f:
                        kids += f.read().split()
                except FileNotFoundError:
                    pass
            if kids or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        print(" ".join(kids), flush=True)
        os._exit(0)
"""


def test_a_kept_server_dies_with_its_process_without_exit_handlers(tmp_path):
    script = helpers.write_script(tmp_path, EXIT_WITHOUT_CLEANUP)
    res, _ = helpers.run_python([str(script)], timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    kept = [int(p) for p in res.stdout.split()]
    assert len(kept) == 1, f"one kept server after the pool ended, found {kept}"
    deadline = time.monotonic() + 5.0
    while helpers.alive(kept[0]) and not helpers.zombie(kept[0]):
        assert time.monotonic() < deadline, "the kept fork server outlived its process"
        time.sleep(0.02)
    assert os.getpid() != kept[0]
