import multiprocessing as mp
# Workers are child processes of the parent as under the stdlib: their own pid, the parent as their
# parent (os.getppid, mp.parent_process), the parent's authkey; a task may run a subprocess.
import os
import subprocess
import sys


def about(parent_pid, parent_authkey):
    child = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
    return (
        os.getpid() != parent_pid,
        os.getppid() == parent_pid,
        mp.parent_process() is not None,
        bytes(mp.current_process().authkey) == parent_authkey,
        child.stdout.strip(),
    )


if __name__ == "__main__":
    print("parent has no parent process:", mp.parent_process() is None)
    with mp.Pool(2) as pool:
        seen = pool.starmap(about, [(os.getpid(), bytes(mp.current_process().authkey))] * 4)
    print("(own pid, child of parent, parent_process set, same authkey, subprocess output):")
    print(sorted(set(seen)))
