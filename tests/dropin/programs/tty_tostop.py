import multiprocessing as mp
# Terminal job control: the runner starts this program on a pseudo-terminal that is the controlling
# terminal of its session, with `stty tostop` set. A task that prints to the terminal, and one that
# sets terminal attributes on /dev/tty (as getpass does), must both complete.
import os
import sys
import termios


def say(x):
    print(f"task {x} prints to the terminal", flush=True)
    return x


def touch_tty(_):
    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    try:
        attrs = termios.tcgetattr(fd)
        termios.tcsetattr(fd, termios.TCSAFLUSH, attrs)  # what getpass does around its prompt
        return "tcsetattr ok"
    finally:
        os.close(fd)


if __name__ == "__main__":
    print("stdout is a tty:", sys.stdout.isatty())
    print("tostop set:", bool(termios.tcgetattr(sys.stdout.fileno())[3] & termios.TOSTOP))
    with mp.Pool(2) as pool:
        for i in range(3):
            print("returned", pool.apply(say, (i,)), flush=True)
        print(pool.apply(touch_tty, (0,)))
    print("done")
