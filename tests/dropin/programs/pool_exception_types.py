import multiprocessing as mp
# Exception types seen by the caller: a custom exception class of the script, an unpicklable
# argument (the original TypeError), an unpicklable result (MaybeEncodingError), get(timeout).
import threading
import time


class ValidationError(ValueError):
    # (An exception whose __init__ does not take its own args cannot be unpickled: the stdlib's
    # result thread dies on it and the call hangs. Not a drop-in case: keep the args protocol.)
    @property
    def field(self):
        return self.args[0]

    def __str__(self):
        return f"{self.args[0]} is invalid: {self.args[1]!r}"


def validate(x):
    if x < 0:
        raise ValidationError("x", x)
    return x


def identity(x):
    return x


def give_lock(_):
    return threading.Lock()


def nap(seconds):
    time.sleep(seconds)
    return seconds


def describe(e):
    return f"{type(e).__module__}.{type(e).__qualname__}"


if __name__ == "__main__":
    with mp.Pool(2) as pool:
        try:
            pool.apply(validate, (-1,))
        except ValidationError as e:
            print("custom:", describe(e), e.field, e.args, str(e), isinstance(e, ValueError))
        try:
            pool.map(validate, [1, 2, -3, 4])
        except ValidationError as e:
            print("custom from map:", describe(e), str(e))
        for bad in (threading.Lock(), (x for x in range(3))):
            try:
                pool.apply(identity, (bad,))
            except Exception as e:
                print("unpicklable argument:", describe(e), str(e))
        try:
            pool.apply(give_lock, (0,))
        except Exception as e:
            print("unpicklable result:", describe(e))
        r = pool.apply_async(nap, (1.0,))
        try:
            r.get(timeout=0.05)
        except mp.TimeoutError as e:
            print("get(timeout):", describe(e))
        print("then:", r.get(timeout=20))
        print("pool still works:", pool.map(validate, [5, 6]))
