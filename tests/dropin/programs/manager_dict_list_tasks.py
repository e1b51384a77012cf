import multiprocessing as mp
# Manager().dict() and .list() passed to tasks as arguments; workers write, the parent reads.


def record(args):
    shared_dict, shared_list, lock, i = args
    shared_dict[i] = i * i
    with lock:
        shared_list.append(i)
    return len(shared_dict) > 0


if __name__ == "__main__":
    with mp.Manager() as manager:
        d = manager.dict()
        lst = manager.list()
        lock = manager.Lock()
        with mp.Pool(2) as pool:
            ok = pool.map(record, [(d, lst, lock, i) for i in range(10)])
        print("all tasks saw the dict:", all(ok))
        print("dict:", sorted(d.items()))
        print("list:", sorted(lst))
