"""What a spawned child may inherit, for hangfree's workers: ``initargs`` that hold locks,
``Value``/``Array``, queues, pipes and Manager proxies.

The stdlib lets such objects be pickled only while it is spawning a child (they check
``multiprocessing.context.assert_spawning``), with its ``ForkingPickler``; the child's
``Popen`` then passes the descriptors they hold (a ``Value``'s shared memory, a queue's
pipe) to that one child. hangfree pickles ``initargs`` once per pool in the same way,
with a stand-in for the spawning ``Popen`` whose descriptors are served by this process
to every worker that asks, the respawned ones too, for as long as the pool lives: a
worker connects to a socket of this process, proves it holds this process's authkey (as
Manager proxies do), names the descriptor, and receives a duplicate (``SCM_RIGHTS``).
Semaphores need nothing served: they are named, and each worker opens them by name.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import socket
import threading
# Annotations only (strings here): importing typing costs a pool's creation ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

__all__ = ["dumps_inherited", "SharedFd", "release"]


class SharedFd:
    """A descriptor of the pool's process, as a worker unpickles it: ``detach()``
    fetches a duplicate of it (what the stdlib's ``DupFd`` wrappers do)."""

    def __init__(self, address: str, key: int):
        self.address = address
        self.key = key

    def detach(self) -> int:
        from multiprocessing import connection, process, reduction

        with connection.Client(self.address, authkey=process.current_process().authkey) as conn:
            conn.send_bytes(b"%d" % self.key)
            return reduction.recv_handle(conn)


class _Sharer:
    """Serves duplicates of registered descriptors on a Unix socket, from one thread,
    until the last one is released."""

    def __init__(self) -> None:
        from multiprocessing import connection, process

        self.pid = os.getpid()
        self.authkey = bytes(process.current_process().authkey)
        self.address = connection.arbitrary_address("AF_UNIX")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.address)
        self.sock.listen(64)
        self.fds: Dict[int, int] = {}
        self.thread = threading.Thread(target=self._serve, name="hangfree-inherit", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        from multiprocessing import connection, reduction

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return  # shut down: nothing is shared any more
            conn = connection.Connection(client.detach())
            try:
                connection.deliver_challenge(conn, self.authkey)
                connection.answer_challenge(conn, self.authkey)
                fd = self.fds.get(int(conn.recv_bytes(32)))
                if fd is not None:
                    reduction.send_handle(conn, fd, 0)
            except (OSError, EOFError, ValueError, connection.AuthenticationError):
                pass  # a worker that died or a stranger: the next one is served
            finally:
                conn.close()

    def stop(self) -> None:
        # Wakes accept() with an error (Linux), ending the thread; then the socket goes.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(1.0)
        self.sock.close()
        try:
            os.unlink(self.address)
        except OSError:
            pass


_lock = threading.Lock()
_sharer: Optional[_Sharer] = None
_keys = itertools.count(1)


def _share(fd: int, keys: List[int]) -> SharedFd:
    """Registers a duplicate of ``fd`` to be served; its key is added to ``keys``."""
    global _sharer
    with _lock:
        if _sharer is None or _sharer.pid != os.getpid():
            _sharer = _Sharer()
        key = next(_keys)
        _sharer.fds[key] = os.dup(fd)
        keys.append(key)
        return SharedFd(_sharer.address, key)


def release(keys: List[int]) -> None:
    """Stops serving the descriptors of ``keys`` (a pool is gone); the serving thread
    ends with the last one."""
    global _sharer
    with _lock:
        sharer = _sharer
        if sharer is None or sharer.pid != os.getpid():
            return
        for key in keys:
            fd = sharer.fds.pop(key, None)
            if fd is not None:
                os.close(fd)
        keys.clear()
        if sharer.fds:
            return
        _sharer = None
    sharer.stop()


class _Spawning:
    """Stands in for the stdlib's spawning ``Popen`` while ``initargs`` are pickled:
    ``assert_spawning`` passes, and the descriptors objects hold are shared (see the
    module docstring)."""

    def __init__(self, keys: List[int]):
        self.keys = keys

    def duplicate_for_child(self, fd: int) -> int:
        return fd

    def DupFd(self, fd: int) -> SharedFd:
        return _share(fd, self.keys)


def _semlock(lock: Any) -> Any:
    """A lock or semaphore as the stdlib pickles it for a spawned child, but refused
    with a clear error when it cannot reach a worker: one made under the fork start
    method is anonymous (its name unlinked at once), so a worker could not open it."""
    name = lock._semlock.name
    if name is None or not os.path.exists(f"/dev/shm/sem.{name.lstrip('/')}"):
        raise ValueError(
            f"{lock!r} was made under the fork start method (an anonymous semaphore only forked "
            f"children can share), so hangfree's workers cannot open it: make it with hangfree's "
            f"own {type(lock).__name__}() (or multiprocessing.get_context('spawn'))")
    return lock.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def _semlock_reducers() -> Dict[type, Any]:
    from multiprocessing import synchronize

    return {cls: _semlock for cls in (synchronize.Lock, synchronize.RLock, synchronize.Semaphore,
                                      synchronize.BoundedSemaphore)}


def dumps_inherited(obj: Any, keys: List[int]) -> bytes:
    """Pickles ``obj`` as the stdlib pickles what it passes to a child it spawns; the
    keys of descriptors shared for it are added to ``keys`` (to ``release`` with the
    pool)."""
    from multiprocessing import context, reduction

    from hangfree._pickling import PROTOCOL, main_is_imported

    semlocks = _semlock_reducers()
    context.set_spawning_popen(_Spawning(keys))
    try:
        buf = io.BytesIO()
        try:
            pickler = reduction.ForkingPickler(buf, PROTOCOL)
            pickler.dispatch_table.update(semlocks)
            pickler.dump(obj)
            data = buf.getvalue()
            if b"__main__" not in data or main_is_imported():
                return data
        except (pickle.PicklingError, TypeError, AttributeError):
            pass
        # Something without an importable name (a lambda, a class of an unimported
        # __main__): by value, with the same reducers for what is inherited.
        import collections

        import cloudpickle

        buf = io.BytesIO()
        pickler = cloudpickle.Pickler(buf, PROTOCOL)
        pickler.dispatch_table = collections.ChainMap(semlocks, reduction.ForkingPickler._extra_reducers,
                                                      cloudpickle.Pickler.dispatch_table)
        pickler.dump(obj)
        return buf.getvalue()
    finally:
        context.set_spawning_popen(None)
