import multiprocessing as mp
# mp.get_context("spawn").Pool(...): workers import the script as __mp_main__.
import sys

IMPORTED_AS = __name__


def where(x):
    return x * 2, IMPORTED_AS, "__mp_main__" in sys.modules


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    print("start method:", ctx.get_start_method())
    with ctx.Pool(2) as pool:
        print(sorted(set(pool.map(where, range(6)))))
    q = ctx.Queue()
    q.put("spawn-queue")
    print(q.get(timeout=10))
