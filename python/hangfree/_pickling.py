"""Pickling for the trip between the caller and its workers.

Workers are fresh interpreters, so anything defined in the caller's ``__main__`` (the
functions of a script, its lambdas and classes) cannot be found there by reference: it
travels by value with cloudpickle. Everything else uses the standard pickle, which is
much faster.
"""

from __future__ import annotations

import pickle
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


loads = pickle.loads
