import multiprocessing as mp
# imap with chunksize > 1 over a generator that raises midway. The stdlib builds chunks from the
# input, and the exception takes the place of the chunk being built when it was raised: items
# already read into that chunk (3 and 4 below) are never run, and next() raises after item 2.


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
        got = []
        try:
            for value in pool.imap(double, source(10, 5), chunksize=3):
                got.append(value)
        except SourceError as e:
            print(f"got {got} then {type(e).__name__}: {e}")
        else:
            print(f"got {got} and no error")
