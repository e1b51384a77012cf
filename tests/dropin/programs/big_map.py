import multiprocessing as mp
# The most common program of all: map a function over 10**5 items.


def f(x):
    return x * x % 7


if __name__ == "__main__":
    with mp.Pool() as p:
        out = p.map(f, range(10**5))
    print(len(out), sum(out), out[:10])
