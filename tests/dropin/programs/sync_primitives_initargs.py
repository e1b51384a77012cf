import multiprocessing as mp
# mp.Event, mp.Semaphore, mp.Condition and mp.Barrier inherited through initargs.
import threading

EV = SEM = COND = BAR = N = None
MET_AT_BARRIER = None


def init(ev, sem, cond, bar, n):
    global EV, SEM, COND, BAR, N, MET_AT_BARRIER
    EV, SEM, COND, BAR, N = ev, sem, cond, bar, n
    # Both workers (and the parent) meet here once: all three parties arrive.
    try:
        BAR.wait(timeout=20)
        MET_AT_BARRIER = True
    except threading.BrokenBarrierError:
        MET_AT_BARRIER = False


def task(i):
    seen = EV.wait(timeout=10)
    with SEM:
        with COND:
            N.value += 1
            COND.notify_all()
    return seen, MET_AT_BARRIER


if __name__ == "__main__":
    ev, sem, cond, bar = mp.Event(), mp.Semaphore(1), mp.Condition(), mp.Barrier(3)
    n = mp.Value("i", 0, lock=False)
    with mp.Pool(2, initializer=init, initargs=(ev, sem, cond, bar, n)) as pool:
        bar.wait(timeout=20)
        print("parent passed the barrier")
        ev.set()
        res = pool.map_async(task, range(6), chunksize=1)
        with cond:
            done = cond.wait_for(lambda: n.value == 6, timeout=20)
        print("condition reached:", done, n.value)
        print("results:", sorted(set(res.get(timeout=20))))
