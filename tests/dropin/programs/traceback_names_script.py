import multiprocessing as mp
# A task's traceback, as the parent sees it, names the script's file, the line and its source text.
import os
import traceback


def inner(x):
    raise ValueError(f"inner failed on {x}")


def outer(x):
    return inner(x) + 1


if __name__ == "__main__":
    me = os.path.basename(__file__)
    with mp.Pool(2) as pool:
        try:
            pool.apply(outer, (7,))
        except ValueError as e:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            lines = text.splitlines()
            frames = set()
            for i, line in enumerate(lines):
                if me in line and "line " in line and ", in " in line:
                    func = line.rsplit(", in ", 1)[1]
                    source = lines[i + 1].strip() if i + 1 < len(lines) else ""
                    frames.add((func, source))
            for func, source in sorted(frames):
                print(func, "|", source)
            print("last line:", lines[-1])
