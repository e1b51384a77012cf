import multiprocessing as mp
# imap over a generator that raises midway: the stdlib yields the results before it, then raises
# the generator's own exception from next() at that position.


class SourceError(Exception):
    pass


def source(n, fail_at):
    for i in range(n):
        if i == fail_at:
            raise SourceError(f"source broke at {i}")
        yield i


def double(x):
    return 2 * x


if __name__ == "__main__":
    with mp.Pool(2) as pool:
        for chunksize in (1,):
            got = []
            it = pool.imap(double, source(10, 5), chunksize=chunksize)
            try:
                for value in it:
                    got.append(value)
            except SourceError as e:
                print(f"chunksize {chunksize}: got {got} then {type(e).__name__}: {e}")
            else:
                print(f"chunksize {chunksize}: got {got} and no error")
        try:
            pool.map(double, source(10, 2))
        except SourceError as e:
            print("map:", type(e).__name__, e)
        print("pool still works:", pool.map(double, [1, 2]))
