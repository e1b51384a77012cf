import multiprocessing as mp
# Pool as a context manager with close(); join() inside, map_async, maxtasksperchild, a pool left
# unclosed at exit (terminated by the interpreter's exit handlers as in the stdlib).


def inc(x):
    return x + 1


if __name__ == "__main__":
    with mp.Pool(processes=2) as pool:
        r = pool.map_async(inc, range(10))
        pool.close()
        pool.join()
        print("after join:", r.ready(), r.get())
    with mp.Pool(2, maxtasksperchild=2) as pool:
        print("maxtasksperchild:", pool.map(inc, range(12), chunksize=1))
    with mp.Pool(2) as pool:
        pass
    pool.terminate()
    pool.join()
    print("terminate twice ok")
    leftover = mp.Pool(2)
    print("leftover:", leftover.apply(inc, (41,)))
    print("cpu_count positive:", mp.cpu_count() > 0)
