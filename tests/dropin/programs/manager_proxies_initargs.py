import multiprocessing as mp
# Manager proxies (dict, list, Queue, Namespace) handed to every worker through initargs.

D = L = Q = NS = None


def init(d, lst, q, ns):
    global D, L, Q, NS
    D, L, Q, NS = d, lst, q, ns


def task(i):
    D[i] = NS.prefix + str(i)
    L.append(i)
    Q.put(i * 10)
    return i


if __name__ == "__main__":
    with mp.Manager() as manager:
        d, lst, q, ns = manager.dict(), manager.list(), manager.Queue(), manager.Namespace()
        ns.prefix = "item-"
        with mp.Pool(2, initializer=init, initargs=(d, lst, q, ns)) as pool:
            print("results:", pool.map(task, range(8)))
        print("dict:", sorted(d.items()))
        print("list:", sorted(lst))
        print("queue:", sorted(q.get(timeout=10) for _ in range(8)))
