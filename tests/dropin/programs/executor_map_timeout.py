from concurrent.futures import ProcessPoolExecutor
# Executor.map with a timeout: the iterator raises TimeoutError (concurrent.futures.TimeoutError,
# the builtin on 3.11) when a result is late; the results before it arrive first.
import concurrent.futures
import time


def nap(seconds):
    time.sleep(seconds)
    return seconds


if __name__ == "__main__":
    with ProcessPoolExecutor(2) as ex:
        got = []
        try:
            for value in ex.map(nap, [0.0, 0.0, 2.0], timeout=0.5):
                got.append(value)
        except concurrent.futures.TimeoutError as e:
            print("got", got, "then", type(e).__name__, isinstance(e, TimeoutError))
