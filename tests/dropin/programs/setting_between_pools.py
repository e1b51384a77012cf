import multiprocessing as mp
# A module-level setting changed between pools.
#
# Reading the parent's *rebinding* of a module global directly in a task depends on the start
# method: a forked worker sees the value at fork time, a spawned worker re-imports the script and
# sees the import-time value. The portable form, which gives the same output under fork and spawn,
# hands the current value to each pool's workers through initializer/initargs, and the task reads
# the global the initializer set. Each pool must use its own value (nothing cached across pools).
import functools

THRESHOLD = 0  # import-time default, replaced in every worker by the initializer


def configure(threshold):
    global THRESHOLD
    THRESHOLD = threshold


def score(x):
    return x >= THRESHOLD


def score_with(threshold, x):
    return x >= threshold


if __name__ == "__main__":
    items = list(range(10))
    for THRESHOLD in (1, 5, 8):
        with mp.Pool(2, initializer=configure, initargs=(THRESHOLD,)) as pool:
            print("initializer", THRESHOLD, sum(pool.map(score, items)))
        # The other portable form: the setting travels with the task (functools.partial).
        with mp.Pool(2) as pool:
            print("partial    ", THRESHOLD, sum(pool.map(functools.partial(score_with, THRESHOLD), items)))
