"""Contexts as in ``multiprocessing.context``, whose ``Pool`` is hangfree's.

A hangfree context wraps one of the stdlib's: everything that is not a pool (``Process``,
``Manager``, ``Queue``, ``Lock``, ``Value``, ``get_start_method``, ...) is the stdlib's own
object, so a program that swaps ``import multiprocessing as mp`` for ``import hangfree
as mp`` gets what it got before, and ``get_context(method)`` returns a context whose
``Pool`` is :class:`hangfree.Pool`.

One thing differs in how objects are made: the stdlib makes a ``Lock`` (and every object
built on semaphores: ``RLock``, ``Condition``, ``Semaphore``, ``Event``, ``Barrier``,
queues, ``Value`` and ``Array`` with their locks) in a *fork* context as an anonymous
semaphore, which only forked children can inherit. hangfree's workers are not forks of
this process, so such objects are made as under spawn (named semaphores), which every
start method, and hangfree's workers through ``initargs``, can share.
"""

from __future__ import annotations

import multiprocessing.context as _mp_context
# Annotations only (strings here): importing typing costs a pool's creation ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, List, Optional

__all__ = ["HangfreeContext", "DefaultContext", "get_context"]

# The context methods that make semaphores (see the module docstring).
_MADE_AS_UNDER_SPAWN = frozenset({
    "Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event", "Barrier", "Queue",
    "JoinableQueue", "SimpleQueue", "Value", "Array",
})


class HangfreeContext:
    """A ``multiprocessing`` context whose ``Pool`` is :class:`hangfree.Pool` (and whose
    ``ProcessPoolExecutor`` is hangfree's); every other attribute is the wrapped stdlib
    context's."""

    def __init__(self, base: Any):
        self._base = base

    def __getattr__(self, name: str) -> Any:
        if name in _MADE_AS_UNDER_SPAWN:
            return getattr(self._sharing_context(), name)
        return getattr(self._base, name)

    def __dir__(self) -> List[str]:
        return sorted(set(dir(self._base)) | {"Pool", "ProcessPoolExecutor"})

    def __repr__(self) -> str:
        return f"<hangfree context over {self._base!r}>"

    def _sharing_context(self) -> Any:
        """The stdlib context that makes objects workers can inherit: this context's own,
        unless it forks (anonymous semaphores), then spawn's."""
        ctx = self._base.get_context()
        return _mp_context._concrete_contexts["spawn"] if ctx.get_start_method() == "fork" else ctx

    def Pool(self, processes: Optional[int] = None, initializer: Optional[Callable[..., Any]] = None,
             initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None, **options: Any) -> Any:
        """A :class:`hangfree.Pool` (``options`` are its keyword-only ones)."""
        from hangfree.pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild, context=self, **options)

    def ProcessPoolExecutor(self, max_workers: Optional[int] = None, initializer: Optional[Callable[..., Any]] = None,
                            initargs: Iterable[Any] = (), **options: Any) -> Any:
        """A :class:`hangfree.ProcessPoolExecutor` (``options`` are its keyword-only ones)."""
        from hangfree.executor import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers, self, initializer, initargs, **options)

    def get_context(self, method: Optional[str] = None) -> "HangfreeContext":
        """This context, or the one for ``method`` (``"fork"``, ``"spawn"``,
        ``"forkserver"``), with hangfree's ``Pool``. The method decides what the stdlib's
        ``Process`` does; hangfree's workers start the same way whatever it is."""
        if method is None:
            return self
        return HangfreeContext(self._base.get_context(method))


DefaultContext = HangfreeContext


def __getattr__(name: str) -> Any:
    # The rest of multiprocessing.context (BaseContext, ForkContext, ProcessError, ...).
    return getattr(_mp_context, name)


#: The context behind the module-level names of ``hangfree`` (``hangfree.Lock``, ...):
#: the stdlib's default context, so ``set_start_method`` and ``get_start_method`` act on
#: the very setting ``multiprocessing`` uses.
_default_context = HangfreeContext(_mp_context._default_context)

get_context = _default_context.get_context
