# The article's first program, with only the import line changed.
import sys
import hangfree as mp

def run(rank):
    if rank == 0:
        print("hi from rank 0", flush=True)
    else:
        sys.exit(1) # Exits abnormally for rank != 0

with mp.Pool(processes=2) as p: 
    p.map(run, [(rank,) for rank in range(2)])
