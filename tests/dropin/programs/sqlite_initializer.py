import multiprocessing as mp
# A real-world initializer: each worker opens its own sqlite3 connection (in memory), fills it,
# and tasks query through the module global.
import sqlite3

DB = None


def init(rows):
    global DB
    DB = sqlite3.connect(":memory:")
    DB.execute("create table t (k integer primary key, v text)")
    DB.executemany("insert into t values (?, ?)", rows)
    DB.commit()


def lookup(k):
    row = DB.execute("select v from t where k = ?", (k,)).fetchone()
    return row[0] if row else None


if __name__ == "__main__":
    rows = [(i, f"value-{i}") for i in range(20)]
    with mp.Pool(2, initializer=init, initargs=(rows,)) as pool:
        print(pool.map(lookup, [0, 5, 19, 42]))
        print(sorted(pool.imap_unordered(lookup, range(0, 20, 4))))
