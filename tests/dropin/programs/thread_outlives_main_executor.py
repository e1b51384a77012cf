from concurrent.futures import ProcessPoolExecutor
# A non-daemon thread waits for executor results after the main thread has returned. (The stdlib
# refuses *new* submissions once the main thread has finished -- RuntimeError "cannot schedule new
# futures after interpreter shutdown" -- so the thread submits first; that refusal is a stdlib
# limitation this corpus does not ask hangfree to copy.)
import threading
import time


def slow_cube(x):
    time.sleep(0.3)
    return x ** 3


def user(executor, submitted):
    futures = [executor.submit(slow_cube, i) for i in range(4)]
    submitted.set()
    threading.main_thread().join()  # returns once the main thread has finished
    print("thread results:", [f.result() for f in futures])


if __name__ == "__main__":
    executor = ProcessPoolExecutor(2)
    submitted = threading.Event()
    threading.Thread(target=user, args=(executor, submitted)).start()
    submitted.wait()
    print("main thread returns")
