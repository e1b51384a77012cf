import multiprocessing as mp
# Tasks print to the inherited stdout (here a pipe): their lines land between the parent's, in order,
# when each task flushes before returning.


def shout(word):
    print(f"  worker says {word.upper()}", flush=True)
    return len(word)


if __name__ == "__main__":
    with mp.Pool(2) as pool:
        for word in ["alpha", "beta", "gamma"]:
            print(f"parent sends {word}", flush=True)
            print(f"parent got {pool.apply(shout, (word,))}", flush=True)
