import multiprocessing as mp
# The rest of the namespace next to a pool: mp.Process with mp.Queue and mp.Pipe, then a Pool
# whose results the Process consumes.


def producer(q, n):
    for i in range(n):
        q.put(i)
    q.put(None)


def echo(conn):
    msg = conn.recv()
    conn.send(msg[::-1])
    conn.close()


def triple(x):
    return 3 * x


if __name__ == "__main__":
    q = mp.Queue()
    p = mp.Process(target=producer, args=(q, 5))
    p.start()
    items = []
    while (item := q.get(timeout=10)) is not None:
        items.append(item)
    p.join(10)
    print("from process:", items, "exit code", p.exitcode)
    parent_end, child_end = mp.Pipe()
    p = mp.Process(target=echo, args=(child_end,))
    p.start()
    parent_end.send("hangfree")
    print("pipe:", parent_end.recv())
    p.join(10)
    with mp.Pool(2) as pool:
        print("pool:", pool.map(triple, items))
    print("active children:", mp.active_children())
