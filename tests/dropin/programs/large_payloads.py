import multiprocessing as mp
# Large arguments and results (several MiB each) through map and apply.
import hashlib


def digest_and_grow(blob):
    return hashlib.sha256(blob).hexdigest()[:16], blob * 2


if __name__ == "__main__":
    blobs = [bytes([i]) * (3 * 1024 * 1024) for i in range(4)]
    with mp.Pool(2) as pool:
        for h, grown in pool.map(digest_and_grow, blobs, chunksize=1):
            print(h, len(grown), hashlib.sha256(grown).hexdigest()[:16])
        h, grown = pool.apply(digest_and_grow, (b"x" * 10_000_000,))
        print(h, len(grown))
