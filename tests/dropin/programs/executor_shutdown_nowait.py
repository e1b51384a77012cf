from concurrent.futures import ProcessPoolExecutor
# shutdown(wait=False): pending calls still run before the interpreter exits (the stdlib joins the
# executor's workers at exit). The runner compares the files left in the working directory, and an
# atexit handler (which runs after the executor has been drained) reports them too.
import atexit
import os
import time


def write_file(name):
    time.sleep(0.3)
    with open(name, "w") as f:
        f.write(name.upper())


def report():
    print("at exit:", sorted(n for n in os.listdir(".") if n.endswith(".out")))


if __name__ == "__main__":
    atexit.register(report)
    executor = ProcessPoolExecutor(2)
    futures = [executor.submit(write_file, f"call{i}.out") for i in range(3)]
    executor.shutdown(wait=False)
    print("shutdown(wait=False) returned")
