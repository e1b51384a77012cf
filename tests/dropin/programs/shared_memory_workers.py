import multiprocessing as mp
# multiprocessing.shared_memory.SharedMemory created by the parent, attached by name and written by
# the workers, read back by the parent.
from multiprocessing import shared_memory


def fill(args):
    name, index = args
    shm = shared_memory.SharedMemory(name=name)
    try:
        shm.buf[index] = index * 3
    finally:
        shm.close()
    return index


if __name__ == "__main__":
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        with mp.Pool(2) as pool:
            done = pool.map(fill, [(shm.name, i) for i in range(16)])
        print("done:", done)
        print("bytes:", list(shm.buf[:16]))
    finally:
        shm.close()
        shm.unlink()
    print("unlinked")
