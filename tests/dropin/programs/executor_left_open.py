from concurrent.futures import ProcessPoolExecutor
# An executor left open at exit: calls already submitted still run before the interpreter exits.
# Their effect is observable afterwards: the runner compares the files left in the working directory.
import time


def write_file(name, text):
    time.sleep(0.3)
    with open(name, "w") as f:
        f.write(text)
    return name


if __name__ == "__main__":
    executor = ProcessPoolExecutor(2)
    print("first:", executor.submit(write_file, "first.txt", "waited for").result())
    executor.submit(write_file, "left_open.txt", "submitted, never waited for")
    executor.submit(write_file, "left_open_2.txt", "also never waited for")
    print("main returns without shutdown")
