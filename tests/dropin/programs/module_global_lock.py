import multiprocessing as mp
# The script's module globals hold unpicklable things (a threading.Lock, an open file) and a large
# list; tasks use them. Under the stdlib the task function travels by reference, so none of that is
# pickled: each worker has its own module state.
import threading

LOCK = threading.Lock()
LOG = open(__file__)  # an open file as a module global
TABLE = list(range(1_000_000))
CACHE = {}


def lookup(i):
    with LOCK:
        if i not in CACHE:
            CACHE[i] = TABLE[i] * 2
        return CACHE[i], LOG.closed


if __name__ == "__main__":
    with mp.Pool(2) as pool:
        print(pool.map(lookup, [0, 10, 999_999]))
        print(sum(v for v, _ in pool.map(lookup, range(0, 1_000_000, 1000), chunksize=1)))
