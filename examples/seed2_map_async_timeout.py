# The article's second program, with only the import line changed.
import sys
import hangfree as mp

def run(rank):
    if rank == 0:
        print("hi from rank 0", flush=True)
    else:
        sys.exit(1)

with mp.Pool(processes=2) as p:
    async_result = p.map_async(run, [(rank,) for rank in range(2)])
    try:
        result = async_result.get(timeout=5)
    except mp.TimeoutError:
        print("Timed out while waiting for results.")
    finally:
        p.terminate() # forcefully terminates worker processes
        p.join()      # waits for worker processes to exit
