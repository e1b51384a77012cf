import multiprocessing as mp
# mp.Array, mp.Queue, mp.SimpleQueue and mp.JoinableQueue inherited through initargs.

ARR = Q = SQ = JQ = None


def init(arr, q, sq, jq):
    global ARR, Q, SQ, JQ
    ARR, Q, SQ, JQ = arr, q, sq, jq


def task(i):
    ARR[i] = i * i
    Q.put(("q", i))
    SQ.put(("sq", i))
    job = JQ.get(timeout=10)
    JQ.task_done()
    return job


if __name__ == "__main__":
    arr = mp.Array("i", 8)
    q, sq, jq = mp.Queue(), mp.SimpleQueue(), mp.JoinableQueue()
    for j in range(8):
        jq.put(f"job{j}")
    with mp.Pool(2, initializer=init, initargs=(arr, q, sq, jq)) as pool:
        jobs = pool.map(task, range(8), chunksize=1)
        # Read the Queue while the workers live: an mp.Queue's items go out through a feeder thread
        # in the worker, and leaving the with block terminates the workers (under load the stdlib
        # itself then loses items still in a feeder's buffer).
        from_queue = sorted(q.get(timeout=10) for _ in range(8))
    jq.join()
    print("array:", list(arr))
    print("queue:", from_queue)
    print("simplequeue:", sorted(sq.get() for _ in range(8)))
    print("jobs taken:", sorted(jobs))
