from concurrent.futures import ProcessPoolExecutor
# Future states as a caller polls them: running() while the call runs, cancel() of a running call
# (False) and of one still queued far behind (True), done()/cancelled() afterwards.
import time


def nap(seconds):
    time.sleep(seconds)
    return seconds


def wait_until(predicate, timeout=1.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=1) as ex:
        futures = [ex.submit(nap, 0.3) for _ in range(6)]
        first, last = futures[0], futures[-1]
        print("first seen running:", wait_until(first.running))
        print("cancel running:", first.cancel())
        print("cancel queued last:", last.cancel())
        print("last cancelled:", last.cancelled(), last.done())
        print("first result:", first.result(), first.running(), first.done())
        print("others:", [f.result() for f in futures[1:-1]])
