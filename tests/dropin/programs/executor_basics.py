from concurrent.futures import ProcessPoolExecutor
# submit, map (with chunksize), as_completed, wait, done callbacks, an initializer setting a global.
import concurrent.futures as cf

PREFIX = None


def init(prefix):
    global PREFIX
    PREFIX = prefix


def tag(x):
    return f"{PREFIX}{x}"


def square(x):
    return x * x


if __name__ == "__main__":
    done = []
    with ProcessPoolExecutor(max_workers=2, initializer=init, initargs=("#",)) as ex:
        futures = {ex.submit(square, i): i for i in range(8)}
        for fut in cf.as_completed(futures):
            fut.add_done_callback(lambda f: done.append(f.result()))
        print("as_completed:", sorted((futures[f], f.result()) for f in futures))
        print("map:", list(ex.map(square, range(10), chunksize=3)))
        print("tags:", list(ex.map(tag, "abc")))
        finished, pending = cf.wait([ex.submit(tag, n) for n in range(3)], return_when=cf.ALL_COMPLETED)
        print("wait:", sorted(f.result() for f in finished), len(pending))
        f = ex.submit(square, 12)
        print("result:", f.result(), f.done(), f.cancelled(), f.exception())
    print("done callbacks:", sorted(done))
