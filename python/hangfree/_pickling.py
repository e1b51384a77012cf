"""Pickling for the trip between the caller and its workers.

Workers are fresh interpreters, so anything defined in the caller's ``__main__`` (the
functions of a script, its lambdas and classes) cannot be found there by reference: it
travels by value with cloudpickle. Everything else uses the standard pickle, which is
much faster.
"""

from __future__ import annotations

import pickle
import struct
import types
import weakref
# Annotations only (strings here); importing typing would cost every worker start ~9 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Union

    # What the engine sends: one bytes object, or parts sent end to end.
    Payload = Union[bytes, List[bytes]]

PROTOCOL = pickle.HIGHEST_PROTOCOL

# Large buffers travel out of band (pickle protocol 5): the pickle stream only says where
# they go, and they are appended to it raw. Pickling a 1 MiB bytes object in band costs
# about twenty times a plain copy of it, and so does scanning it for "__main__".
OOB_MIN = 64 * 1024
# A payload with out-of-band buffers starts with this byte; a plain pickle starts with
# the PROTO opcode (0x80). Then: u32 buffer count, u64 stream length, one u64 per buffer
# (its length, with the top bit set when the buffer was writable), the stream, the buffers.
_OOB = 0x01
_WRITABLE = 1 << 63


class _LargeBytes:
    """A large ``bytes`` argument or result, pickled as an out-of-band buffer (bytes have
    no protocol-5 form of their own, unlike bytearray and NumPy arrays)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce_ex__(self, protocol: int) -> Any:
        return (bytes, (pickle.PickleBuffer(self.data),))


def _wrap(value: Any) -> Any:
    return _LargeBytes(value) if type(value) is bytes and len(value) >= OOB_MIN else value


def dumps(obj: Any) -> bytes:
    """Pickles ``obj``, by value where the standard pickle would refer to ``__main__``;
    large buffers (bytearray, NumPy arrays, ...) go out of band."""
    data = dumps_payload(obj)
    return data if type(data) is bytes else b"".join(data)


def dumps_payload(obj: Any) -> Payload:
    """Like ``dumps``, but a payload with out-of-band buffers comes as its parts, which
    the engine sends end to end without joining them here: a large ``bytes`` object
    travels as itself, not as a copy."""
    buffers: List[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(obj, PROTOCOL, buffer_callback=buffers.append)
    except Exception:
        buffers.clear()
        data = _dumps_by_value(obj, buffers)
    else:
        # A reference to __main__ would not resolve in the worker: send such objects by value.
        if b"__main__" in data:
            buffers.clear()
            data = _dumps_by_value(obj, buffers)
    if not buffers:
        return data
    raws = [b.raw() for b in buffers]
    head = struct.pack(
        f"<BIQ{len(raws)}Q", _OOB, len(raws), len(data), *(r.nbytes | (0 if r.readonly else _WRITABLE) for r in raws)
    )
    parts = [head, data]
    for r in raws:
        # A whole bytes object goes as it is; anything else (bytearray, an array) as a copy.
        parts.append(r.obj if type(r.obj) is bytes and r.nbytes == len(r.obj) else r.tobytes())
    return parts


def _dumps_by_value(obj: Any, buffers: List[pickle.PickleBuffer]) -> bytes:
    # Imported here: a worker process needs cloudpickle only to send such objects back
    # (loading them imports it by itself), and starts sooner without it.
    import cloudpickle

    return cloudpickle.dumps(obj, PROTOCOL, buffer_callback=buffers.append)


def dumps_call(fn_bytes: bytes, args: tuple, kwargs: Dict[str, Any]) -> Payload:
    """Pickles one call; its large ``bytes`` arguments travel out of band."""
    if any(type(a) is bytes and len(a) >= OOB_MIN for a in args):
        args = tuple(_wrap(a) for a in args)
    if kwargs and any(type(v) is bytes and len(v) >= OOB_MIN for v in kwargs.values()):
        kwargs = {k: _wrap(v) for k, v in kwargs.items()}
    return dumps_payload((fn_bytes, args, kwargs))


def dumps_result(value: Any) -> Payload:
    """Pickles a task's value; a large ``bytes`` value travels out of band."""
    return dumps_payload(_wrap(value))


def loads(data: Payload) -> Any:
    """Unpickles what ``dumps`` made: one bytes object, or its parts as the engine splits
    a large value (head and stream, then each buffer as a bytes object of its own, which
    is then used as it is). Buffers that were writable come back writable (a copy);
    read-only ones are views of ``data``."""
    if type(data) is list:
        head, parts = data[0], data[1:]
    elif not data or data[0] != _OOB:
        return pickle.loads(data)
    else:
        head, parts = data, None
    count, stream_len = struct.unpack_from("<IQ", head, 1)
    sizes = struct.unpack_from(f"<{count}Q", head, 13)
    view = memoryview(head)
    at = 13 + 8 * count
    stream = view[at : at + stream_len]
    at += stream_len
    buffers: List[Any] = []
    for k, size in enumerate(sizes):
        n = size & ~_WRITABLE
        part = parts[k] if parts is not None else view[at : at + n]
        buffers.append(bytearray(part) if size & _WRITABLE else part)
        at += n
    return pickle.loads(stream, buffers=buffers)


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

