import multiprocessing as mp
# starmap and starmap_async with tuples, and map with kwargs-like partials.
import functools
import operator


def power(base, exp, mod=None):
    return pow(base, exp, mod)


if __name__ == "__main__":
    pairs = [(b, e) for b in range(2, 5) for e in range(3)]
    with mp.Pool(2) as pool:
        print(pool.starmap(power, pairs))
        print(pool.starmap_async(operator.mul, zip(range(5), range(5, 10))).get(20))
        print(pool.map(functools.partial(power, exp=3, mod=7), range(8)))
        print(pool.starmap(power, [(3, 4, 5)], chunksize=1))
