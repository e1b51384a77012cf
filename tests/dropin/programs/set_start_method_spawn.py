import multiprocessing as mp
# freeze_support() + set_start_method("spawn") at the top of the main block, then a plain Pool.


def cube(x):
    return x ** 3


if __name__ == "__main__":
    mp.freeze_support()
    mp.set_start_method("spawn")
    print("start method:", mp.get_start_method())
    with mp.Pool(2) as pool:
        print(pool.map(cube, range(8)))
    lock = mp.Lock()
    with lock:
        print("lock works")
