import multiprocessing as mp
# The classic counter: mp.Lock() and mp.Value('i', 0) inherited through Pool(initializer, initargs);
# incremented 100 times under the lock, it reads 100.

LOCK = COUNTER = None


def init(lock, counter):
    global LOCK, COUNTER
    LOCK, COUNTER = lock, counter


def bump(_):
    with LOCK:
        COUNTER.value += 1


if __name__ == "__main__":
    lock = mp.Lock()
    counter = mp.Value("i", 0)
    with mp.Pool(2, initializer=init, initargs=(lock, counter)) as pool:
        pool.map(bump, range(100), chunksize=1)
    print("counter:", counter.value)
    # Value's own lock, through initargs as well.
    total = mp.Value("d", 0.0)
    with mp.Pool(2, initializer=init, initargs=(total.get_lock(), total)) as pool:
        pool.map(bump, range(50), chunksize=3)
    print("total:", total.value)
