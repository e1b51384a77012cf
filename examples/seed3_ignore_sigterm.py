# The article's third program, with only the import line changed.
import time
import signal
import hangfree as mp

def run(rank):
    if rank == 0:
        print("hi from rank 0", flush=True)
    else:
        # Simulate a process stuck in a blocking operation (e.g., C extension, I/O)
        # We explicitly ignore SIGTERM to demonstrate stubbornness
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        time.sleep(600) # Long sleep to simulate blocking I/O

with mp.Pool(processes=2) as p:
    async_result = p.map_async(run, [(rank,) for rank in range(2)])
    try:
        result = async_result.get(timeout=5)
    except mp.TimeoutError:
        print("Timed out, but process might still be stuck.")
    finally:
        p.terminate()
        p.join()
