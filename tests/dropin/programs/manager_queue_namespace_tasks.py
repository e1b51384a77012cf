import multiprocessing as mp
# Manager().Queue() and .Namespace() passed to tasks; tasks read the namespace and put on the queue.


def produce(q, ns, i):
    q.put((i, i * ns.factor))
    return ns.label


if __name__ == "__main__":
    with mp.Manager() as manager:
        q = manager.Queue()
        ns = manager.Namespace()
        ns.factor = 3
        ns.label = "ns-ok"
        with mp.Pool(2) as pool:
            labels = pool.starmap(produce, [(q, ns, i) for i in range(6)])
        items = sorted(q.get(timeout=10) for _ in range(6))
        print("labels:", sorted(set(labels)))
        print("queue:", items)
        print("queue empty after:", q.empty())
