import multiprocessing as mp
# Environment variables and the working directory changed by the parent between pools: workers of
# each new pool see the parent's state at the time the pool was made (as forked or spawned children).
import os


def probe(_):
    return os.environ.get("JOB_MODE"), os.getcwd()


if __name__ == "__main__":
    base = os.getcwd()

    def seen(results):
        return sorted({(mode, os.path.relpath(cwd, base)) for mode, cwd in results})

    for mode in ("fast", "careful"):
        os.environ["JOB_MODE"] = mode
        os.makedirs(os.path.join(base, mode), exist_ok=True)
        os.chdir(os.path.join(base, mode))
        with mp.Pool(2) as pool:
            print(mode, seen(pool.map(probe, range(4))))
    del os.environ["JOB_MODE"]
    os.chdir(base)
    with mp.Pool(2) as pool:
        print("unset", seen(pool.map(probe, range(4))))
