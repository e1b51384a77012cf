import multiprocessing as mp
# python-flags: -O -X dev -W error::UserWarning
# Interpreter flags reach the workers as they do under the stdlib: the runner starts this program
# with the flags in the line above (both runs), and tasks report what they see.
import sys
import warnings


def flags(_):
    try:
        warnings.warn("from a task", UserWarning)
        warned = "warning ignored or printed"
    except UserWarning:
        warned = "warning raised"
    try:
        assert False
        asserted = "assert skipped"
    except AssertionError:
        asserted = "assert ran"
    return sys.flags.optimize, sys.flags.dev_mode, warned, asserted


if __name__ == "__main__":
    print("parent:", sys.flags.optimize, sys.flags.dev_mode)
    with mp.Pool(2) as pool:
        print("workers:", sorted(set(pool.map(flags, range(4)))))
