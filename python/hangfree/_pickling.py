"""Pickling for the trip between the caller and its workers.

Workers are fresh interpreters, so anything defined in the caller's ``__main__`` (the
functions of a script, its lambdas and classes) cannot be found there by reference: it
travels by value with cloudpickle. Everything else uses the standard pickle, which is
much faster.
"""

from __future__ import annotations

import pickle
import types
import weakref
from typing import Any

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj: Any) -> bytes:
    """Pickles ``obj``, by value where the standard pickle would refer to ``__main__``."""
    try:
        data = pickle.dumps(obj, PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, PROTOCOL)
    # A reference to __main__ would not resolve in the worker: send such objects by value.
    if b"__main__" in data:
        return cloudpickle.dumps(obj, PROTOCOL)
    return data


# Functions pickled by value, by function. Workers never see the caller's globals change
# after they started (as with multiprocessing's fork and spawn alike), so a function
# without a closure may be pickled once; a closure's cells can change between calls.
_by_value: "weakref.WeakKeyDictionary[Any, bytes]" = weakref.WeakKeyDictionary()


def dumps_function(fn: Any) -> bytes:
    """Pickles a task's function, reusing the by-value pickle of a plain function."""
    cached = _by_value.get(fn) if isinstance(fn, types.FunctionType) else None
    if cached is not None:
        return cached
    data = dumps(fn)
    if isinstance(fn, types.FunctionType) and fn.__closure__ is None:
        try:
            _by_value[fn] = data
        except TypeError:
            pass
    return data


loads = pickle.loads
