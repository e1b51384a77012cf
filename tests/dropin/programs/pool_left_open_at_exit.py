import multiprocessing as mp
# A Pool never closed: at exit the stdlib terminates it (its finalizer runs from the interpreter's
# exit hooks), so a slow task submitted and never waited for does not finish. The runner compares the
# files left in the working directory: only the quick task's.
import time


def write_after(name, delay):
    time.sleep(delay)
    with open(name, "w") as f:
        f.write("written")
    return name


if __name__ == "__main__":
    pool = mp.Pool(2)
    print(pool.apply_async(write_after, ("quick.txt", 0.0)).get(20))
    pool.apply_async(write_after, ("slow.txt", 3.0))
    print("main returns with the pool open")
