from concurrent.futures import ProcessPoolExecutor
# Exception types from Future.result(): sys.exit() in a task is SystemExit, a custom exception of
# the script keeps its class, an unpicklable argument or result raises the original error, and
# result(timeout) raises TimeoutError.
import concurrent.futures
import sys
import threading
import time


class QuotaExceeded(Exception):
    pass


def leave(code):
    sys.exit(code)


def charge(amount):
    if amount > 100:
        raise QuotaExceeded(amount)
    return amount


def identity(x):
    return x


def give_lock():
    return threading.Lock()


def nap(seconds):
    time.sleep(seconds)
    return seconds


def describe(e):
    return f"{type(e).__module__}.{type(e).__qualname__}"


if __name__ == "__main__":
    with ProcessPoolExecutor(2) as ex:
        try:
            ex.submit(leave, 3).result()
        except SystemExit as e:
            print("sys.exit in task:", describe(e), e.code)
        try:
            ex.submit(charge, 500).result()
        except QuotaExceeded as e:
            print("custom:", describe(e), e.args)
        try:
            list(ex.map(charge, [1, 200, 3]))
        except QuotaExceeded as e:
            print("custom from map:", e.args)
        try:
            ex.submit(identity, threading.Lock()).result()
        except Exception as e:
            print("unpicklable argument:", describe(e), str(e))
        try:
            ex.submit(give_lock).result()
        except Exception as e:
            print("unpicklable result:", describe(e), str(e))
        f = ex.submit(nap, 1.0)
        try:
            f.result(timeout=0.05)
        except concurrent.futures.TimeoutError as e:
            print("result(timeout):", describe(e), isinstance(e, TimeoutError))
        print("then:", f.result())
        print("still works:", list(ex.map(charge, [7, 8])))
