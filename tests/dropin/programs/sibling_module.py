import multiprocessing as mp
# Tasks and argument classes from a module that sits beside the script (found on sys.path[0]).
from _shapes import Circle, area


def biggest(shapes):
    return max(shapes, key=area).r


if __name__ == "__main__":
    with mp.Pool(2) as pool:
        print(pool.map(area, [Circle(r) for r in range(5)]))
        print(pool.apply(biggest, ([Circle(3), Circle(7), Circle(1)],)))
        print(type(pool.apply(Circle, (2,))).__module__)
