"""Type stubs for ``hangfree._core``, the Rust extension (crates/hangfree-python)."""

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

KIND_INIT: int
KIND_TASK: int
KIND_SHUTDOWN: int
KIND_READY: int
KIND_INIT_FAILED: int
KIND_VALUE: int
KIND_RAISED: int
KIND_STACK: int
KIND_CHUNK: int
KIND_ITEMS: int

class SubmitRefused(RuntimeError):
    """The engine refused a submission: ``args`` is ``(kind, message, detail)`` with kind
    one of "closed", "terminated", "broken", "forked", "too_large"."""

def kill_own_group() -> None:
    """Ends this worker and its whole process group with SIGKILL (never returns)."""

def close_gate() -> None:
    """Called by the exit handler on the thread that will finalize the interpreter: from
    then on any other thread that comes back from a wait in this module parks there for
    good instead of taking the GIL back."""

def parked_threads() -> List[int]:
    """The native thread ids of the threads parked by ``close_gate``."""

def release_fork_servers() -> int:
    """Stops the fork servers that ended pools of this process kept for later pools
    (``keep_fork_server`` in ``defaults()``), and keeps none from pools that end before
    the next one starts. Returns how many were stopped."""

STACK_DUMP_SIGNAL: int
OOB_MARKER: int

def oob_head(stream_len: int, buffers: Sequence[Tuple[int, bool]]) -> bytes:
    """The head of a payload with out-of-band buffers (PROTOCOL.md): for a pickle stream
    of ``stream_len`` bytes and buffers of these ``(length, writable)``."""

def oob_layout(
    data: bytes, end: Optional[int] = None
) -> Optional[Tuple[Tuple[int, int], List[Tuple[int, int, bool]]]]:
    """Where the pickle stream and the buffers of ``data[:end]`` are, as ``((start, end),
    [(start, end, writable), ...])``; None without out-of-band buffers. Raises ValueError
    for a payload whose lengths do not add up."""

def defaults() -> Dict[str, Any]:
    """The engine's default for every ``Engine`` setting left at None (seconds as floats,
    None for no limit), and the stack dump's ``stack_dump_signal`` and ``stack_dump_wait``."""

def parse_size(text: str) -> int:
    """A memory size such as "2GiB" or "512MB", in bytes."""

class Engine:
    """A pool engine: worker processes running ``argv``, supervised by a Rust thread."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        workers: Optional[int] = None,
        task_timeout: Optional[float] = None,
        grace: Optional[float] = None,
        kill_wait: Optional[float] = None,
        startup_timeout: Optional[float] = None,
        max_tasks_per_worker: Optional[int] = None,
        max_startup_failures: Optional[int] = None,
        init_payload: bytes = b"",
        prefetch: Optional[int] = None,
        forward_stderr: Optional[bool] = None,
        env: Sequence[Tuple[str, str]] = (),
        max_memory: Optional[int] = None,
        retries: Optional[int] = None,
        events: bool = False,
        cgroup: Optional[bool] = None,
        fork_server: Optional[bool] = None,
    ) -> None:
        """Each setting left at None takes the engine's default (see ``defaults()``)."""
    def submit(
        self,
        key: int,
        payloads: Sequence[Union[bytes, Sequence[bytes]]],
        *,
        chunksize: int = 1,
        timeout: Optional[float] = None,
        labels: Optional[Sequence[str]] = None,
        claim: bool = False,
        items: Optional[Sequence[int]] = None,
    ) -> int:
        """Submits payloads (bytes, or parts sent end to end); returns the first task id
        (ids are consecutive). With ``items``, each payload is a chunk of that many items,
        whose outcomes come a few items at a time."""
    def next_outcomes(self, timeout: float) -> List[Tuple[int, int, str, Any, int, int]]:
        """``(key, index, kind, data, first, count)`` for every outcome ready within
        ``timeout``: items ``first .. first + count`` of a chunk (0, 1 for a task)."""
    def wait_claim(self, key: int, timeout: float) -> Optional[Tuple[str, Any]]:
        """``(kind, data)`` of a claimable submission taken by this waiter, or None on
        time-out or once it is ``completed`` elsewhere."""
    def completed(self, key: int) -> None:
        """Wakes the waiters of a claimable submission whose future is done."""
    def take_events(self) -> List[Tuple[str, bool, Optional[int], Optional[int], str]]:
        """``(kind, trouble, pid, task_id, message)`` for the events since the last call."""
    def cancel(self, task_id: int) -> None: ...
    def cancel_if_queued(self, task_id: int) -> bool: ...
    def task_state(self, task_id: int) -> str:
        """Where a task is: "queued" (no worker has it), "sent_ahead" (waiting in a busy
        worker's channel, not started), "running" (its worker has started it) or "done"
        (its outcome was delivered, or the id is unknown)."""
    def close(self) -> None: ...
    def terminate(self) -> None: ...
    def join(self, timeout: Optional[float] = None) -> bool: ...
    @property
    def workers(self) -> int: ...
    @property
    def shutdown_bound(self) -> float: ...
    def is_finished(self) -> bool: ...
    def stats(self) -> Dict[str, int]: ...
    def startup_failure(self) -> Optional[Dict[str, Any]]: ...

class WorkerChannel:
    """The worker's end of its channel (used by ``hangfree._worker``)."""

    @staticmethod
    def from_stdin() -> "WorkerChannel": ...
    def recv(self) -> Optional[Tuple[int, int, bytes]]: ...
    def send(self, kind: int, task_id: int, payload: Union[bytes, Sequence[bytes]]) -> None: ...
    def close(self) -> None: ...
    def items(self, items: Sequence[Any], start: int) -> "ChunkItems":
        """Items ``start..`` of a chunk, each marked on the progress page as it starts."""

class ChunkItems(Iterator[Any]):
    """A chunk's items for the worker's loop: stops early (to be resumed) when finished
    items should be sent, and for good once every item started or the pool revoked the
    worker."""

    def __next__(self) -> Any: ...
    @property
    def next_index(self) -> int: ...
    @property
    def done(self) -> bool: ...
    @property
    def revoked(self) -> bool: ...
    def flushed(self) -> None: ...

def cli_main(args: Sequence[str], worker: Sequence[str]) -> int:
    """Runs the ``hangfree`` command line (``args`` with the program name first); its
    workers are started as ``worker... __worker``."""
