from concurrent.futures import ProcessPoolExecutor
# asyncio's run_in_executor with a process pool.
import asyncio


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


async def main():
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(2) as ex:
        results = await asyncio.gather(*(loop.run_in_executor(ex, fib, n) for n in range(15, 20)))
    print(results)


if __name__ == "__main__":
    asyncio.run(main())
