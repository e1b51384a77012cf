from concurrent.futures import ProcessPoolExecutor
# ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")) with a Manager dict shared
# with the tasks.
import multiprocessing


def store(d, k):
    d[k] = k.upper()
    return len(k)


if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        d = manager.dict()
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
            lengths = list(ex.map(store, [d] * 3, ["a", "bb", "ccc"]))
        print(lengths, sorted(d.items()))
