import multiprocessing as mp
# A nested function (closure) and a lambda that capture a value changing between pools.
#
# The stdlib runs this because on Linux its default start method is fork: the initializer is not
# pickled, the forked worker simply has it. (Under spawn the stdlib could not pickle a closure.)
# hangfree pickles what has no importable name by value; each pool must see its own captured value,
# never a by-value copy cached from an earlier pool.

LIMIT = None


def make_init(limit):
    def init():
        global LIMIT
        LIMIT = limit
    return init


def under_limit(x):
    return x < LIMIT


def apply_hook(x):
    return HOOK(x)


HOOK = None

if __name__ == "__main__":
    for limit in (2, 4, 7):
        with mp.Pool(2, initializer=make_init(limit)) as pool:
            print("closure", limit, pool.map(under_limit, range(8)).count(True))
    for k in (10, 100):
        def set_hook(k=k):
            global HOOK
            HOOK = lambda x: x * k  # noqa: E731
        with mp.Pool(2, initializer=set_hook) as pool:
            print("lambda ", k, pool.map(apply_hook, [1, 2, 3]))
