import multiprocessing as mp
# apply_async with callback and error_callback; map_async with callbacks.


class Boom(Exception):
    pass


def work(x):
    if x % 4 == 3:
        raise Boom(f"bad {x}")
    return x * 10


if __name__ == "__main__":
    results, errors = [], []
    with mp.Pool(2) as pool:
        handles = [pool.apply_async(work, (i,), callback=results.append, error_callback=errors.append)
                   for i in range(10)]
        for h in handles:
            h.wait(20)
        print("successful:", [h.successful() for h in handles])
        mapped = []
        pool.map_async(work, [0, 1, 2], callback=mapped.append).wait(20)
        failed = []
        pool.map_async(work, [0, 3], error_callback=failed.append).wait(20)
        pool.close()
        pool.join()
    print("results:", sorted(results))
    print("errors:", sorted((type(e).__name__, str(e)) for e in errors))
    print("map callback:", mapped)
    print("map error callback:", [(type(e).__name__, str(e)) for e in failed])
