import multiprocessing as mp
# The standard initializer pattern: `global CONN; CONN = ...` in the initializer, read by the task.

CONN = None


class Connection:
    def __init__(self, dsn):
        self.dsn = dsn
        self.queries = 0

    def query(self, x):
        self.queries += 1
        return f"{self.dsn}:{x}"


def init(dsn):
    global CONN
    CONN = Connection(dsn)


def task(x):
    if CONN is None:
        return "no connection"
    return CONN.query(x)


if __name__ == "__main__":
    with mp.Pool(2, initializer=init, initargs=("db://main",)) as pool:
        print(pool.map(task, range(5)))
        print(pool.apply(task, ("single",)))
    print("parent CONN still:", CONN)
