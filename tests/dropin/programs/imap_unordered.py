import multiprocessing as mp
# imap_unordered and imap with various chunk sizes.


def square(x):
    return x * x


if __name__ == "__main__":
    with mp.Pool(2) as pool:
        print(sorted(pool.imap_unordered(square, range(20))))
        print(sorted(pool.imap_unordered(square, range(100), chunksize=7)))
        print(list(pool.imap(square, range(15), chunksize=4)))
        it = pool.imap(square, iter([3, 4, 5]))
        print(next(it), next(it), next(it))
        try:
            next(it)
        except StopIteration:
            print("StopIteration")
