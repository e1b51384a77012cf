import multiprocessing as mp
# A non-daemon thread keeps using a Pool after the main thread has returned: the interpreter waits
# for non-daemon threads before it finalizes, so the thread gets its results.
import threading
import time


def slow_square(x):
    time.sleep(0.05)
    return x * x


def user(pool, started):
    started.set()
    threading.main_thread().join()  # returns once the main thread has finished
    print("thread map:", pool.map(slow_square, range(6)))
    print("thread apply:", pool.apply(slow_square, (9,)))


if __name__ == "__main__":
    pool = mp.Pool(2)
    started = threading.Event()
    threading.Thread(target=user, args=(pool, started)).start()
    started.wait()
    print("main thread returns")
