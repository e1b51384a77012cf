"""Pickling for the trip between the caller and its workers.

Workers import the caller's main script as ``__mp_main__``, as children spawned by
multiprocessing do, so its functions and classes travel by reference, as everything else
does. What has no name a worker can import travels by value with cloudpickle: lambdas,
nested functions, functions defined under ``if __name__ == "__main__":``, and anything of
a ``__main__`` that workers do not import (``python -c``, standard input, an interactive
session, a notebook).
"""

from __future__ import annotations

import os
import pickle
import sys
import types

from hangfree import _core

# Annotations only (strings here); importing typing would cost every worker start ~9 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Union

    # What the engine sends: one bytes object, or parts sent end to end.
    Payload = Union[bytes, List[bytes]]
    from typing import FrozenSet, MutableMapping, Tuple

    # Per script: the names it binds when imported, and the line ranges of its main guards.
    MainFacts = Tuple[FrozenSet[str], List[Tuple[int, int]]]

PROTOCOL = pickle.HIGHEST_PROTOCOL

# Large buffers travel out of band (pickle protocol 5): the pickle stream only says where
# they go, and they are appended to it raw. Pickling a 1 MiB bytes object in band costs
# about twenty times a plain copy of it, and so does scanning it for "__main__".
OOB_MIN = 64 * 1024
# A payload with out-of-band buffers starts with this byte (a plain pickle starts with
# the PROTO opcode, 0x80). Its layout (PROTOCOL.md) is written and read by the engine
# alone: `_core.oob_head` and `_core.oob_layout`.
_OOB = _core.OOB_MARKER


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
        # A reference to a __main__ that the other side does not import would not
        # resolve there: send such objects by value. Asked first, as the scan of a large
        # pickle costs a fifth of pickling it.
        if not main_is_imported() and b"__main__" in data:
            buffers.clear()
            data = _dumps_by_value(obj, buffers)
    if not buffers:
        return data
    raws = [b.raw() for b in buffers]
    parts = [_core.oob_head(len(data), [(r.nbytes, not r.readonly) for r in raws]), data]
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


def loads(data: Payload, end: Optional[int] = None) -> Any:
    """Unpickles what ``dumps`` made: one bytes object (its first ``end`` bytes, if
    given), or its parts as the engine splits a large value: the pickle stream, then each
    buffer, a bytes object used as it is or, where the buffer was writable, a bytearray.
    From one bytes object, buffers that were writable come back writable (a copy);
    read-only ones are views of ``data``."""
    if type(data) is list:
        return pickle.loads(data[0], buffers=data[1:])
    if not data or data[0] != _OOB:
        return pickle.loads(data if end is None else memoryview(data)[:end])
    (start, stop), layout = _core.oob_layout(data, end)
    view = memoryview(data)
    buffers = [bytearray(view[a:b]) if writable else view[a:b] for a, b, writable in layout]
    return pickle.loads(view[start:stop], buffers=buffers)


# Set once a pool is made by the main script's own top-level code, outside an
# `if __name__ == "__main__":` guard: workers must not import such a script (it would make
# pools of its own), so its objects travel by value, as they had to before.
_main_not_imported = False


def main_is_imported() -> bool:
    """Whether workers import this process's ``__main__`` (as multiprocessing's spawn
    does: a script run by path, or a module run with ``-m``), so that its objects can be
    pickled by reference."""
    if _main_not_imported:
        return False
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return not (name == "__main__" or name.endswith(".__main__"))
    return getattr(main, "__file__", None) is not None


def made_by_unguarded_main_code() -> bool:
    """Whether the caller runs in the main script's top-level code outside an ``if
    __name__ == "__main__":`` guard (a script that works under fork, which never imports
    it again). If so, workers of this process no longer import the script."""
    global _main_not_imported
    main = sys.modules.get("__main__")
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is getattr(main, "__dict__", None):
            # The bytecode's answer holds only for a script workers can import: one that
            # is a file (a script run from a zip has no source file to read either, and
            # its workers import nothing: its functions go by value).
            path = getattr(main, "__file__", None)
            if path is not None and os.path.isfile(path) and _in_main_guard(frame.f_code, frame.f_lasti):
                return False
            facts = _main_facts()
            if facts is None or not any(a <= frame.f_lineno <= b for a, b in facts[1]):
                _main_not_imported = True
                return True
            return False
        frame = frame.f_back
    return False


def _in_main_guard(code: Any, offset: int) -> bool:
    """Whether the instruction at ``offset`` of the main script's module code runs in the
    body of an ``if __name__ == "__main__":`` (or a test that starts so): read from the
    bytecode, which is in memory, instead of parsing the script (importing ``ast`` and
    parsing a 600-line script took 3-12 ms of a pool's creation). Only a yes is sure: the
    test's jump skips the body, so the body lies between them; a body the compiler laid
    out elsewhere answers no, and the caller then asks the script's source."""
    global _guard_bodies_of
    if _guard_bodies_of is None or _guard_bodies_of[0] is not code:
        _guard_bodies_of = (code, _guard_bodies(code))
    return any(start < offset < end for start, end in _guard_bodies_of[1])


# The main script's module code and its guard bodies (see `_in_main_guard`).
_guard_bodies_of: "Optional[Tuple[Any, List[Tuple[int, int]]]]" = None


def _guard_bodies(code: Any) -> "List[Tuple[int, int]]":
    """The offsets (after the test's jump, the jump's target) that enclose each body run
    only when ``__name__ == "__main__"``, in every bytecode from 3.9: the two loaded in
    either order, compared with ``==``, then a forward jump if false."""
    import dis

    ins = [i for i in dis.get_instructions(code) if i.opname not in ("CACHE", "EXTENDED_ARG")]
    bodies = []
    for k in range(len(ins) - 3):
        a, b, cmp = ins[k], ins[k + 1], ins[k + 2]
        if not (cmp.opname == "COMPARE_OP" and "==" in cmp.argrepr and {a.argval, b.argval} == {"__name__", "__main__"}
                and {a.opname, b.opname} in ({"LOAD_NAME", "LOAD_CONST"}, {"LOAD_GLOBAL", "LOAD_CONST"})):
            continue
        jump = ins[k + 3]
        if jump.opname == "TO_BOOL" and k + 4 < len(ins):
            jump = ins[k + 4]
        if (jump.opname in ("POP_JUMP_IF_FALSE", "POP_JUMP_FORWARD_IF_FALSE") and isinstance(jump.argval, int)
                and jump.argval > jump.offset):
            bodies.append((jump.offset, jump.argval))
    return bodies


def dumps_function(fn: Any, cache: "MutableMapping[Any, bytes]") -> bytes:
    """Pickles a task's function (or an initializer): by reference where a worker can
    import it, by value otherwise. ``cache`` (one per pool) keeps the pickle of a plain
    function, so a pool sees the function as it was when the pool first sent it, as a
    forked worker would; a new pool pickles it anew."""
    plain = isinstance(fn, types.FunctionType)
    cached = cache.get(fn) if plain else None
    if cached is not None:
        return cached
    if plain and fn.__module__ == "__main__" and main_is_imported() and not _defined_on_import(fn):
        data = _dumps_by_value(fn, [])
    else:
        data = dumps(fn)
    if plain and fn.__closure__ is None:
        try:
            cache[fn] = data
        except TypeError:
            pass
    return data


def _defined_on_import(fn: Any) -> bool:
    """Whether importing the main script defines ``fn`` under its name: not so for a
    function defined under ``if __name__ == "__main__":`` (which a forked worker would
    have, and so must travel by value), nor for nested functions and lambdas."""
    qualname = fn.__qualname__
    if "<" in qualname:
        return False
    facts = _main_facts()
    return facts is None or qualname.partition(".")[0] in facts[0]


_main_facts_of: "Dict[str, Optional[MainFacts]]" = {}


def _main_facts() -> "Optional[MainFacts]":
    """What the main script's source says (see ``_read_main_facts``), read once per
    script. None if the source cannot be read."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:
        return None
    if path not in _main_facts_of:
        _main_facts_of[path] = _read_main_facts(path)
    return _main_facts_of[path]


def _read_main_facts(path: str) -> "Optional[MainFacts]":
    """The names a script binds when imported (not run as ``__main__``), and the line
    ranges of its ``if __name__ == "__main__":`` blocks."""
    import ast

    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    names: set = set()
    guards: List[Tuple[int, int]] = []

    def is_main_guard(test: Any) -> bool:
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
            return False
        sides = [test.left, test.comparators[0]]
        return (any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
                and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides))

    def visit(body: List[Any]) -> None:
        for st in body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(st.name)
            elif isinstance(st, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).partition(".")[0] for a in st.names)
            elif isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(st, ast.If):
                if is_main_guard(st.test):
                    guards.append((st.lineno, st.end_lineno or st.lineno))
                else:
                    visit(st.body)
                visit(st.orelse)
            elif isinstance(st, ast.Try):
                visit(st.body)
                for h in st.handlers:
                    visit(h.body)
                visit(st.orelse)
                visit(st.finalbody)
            elif isinstance(st, (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)):
                visit(st.body)
                visit(getattr(st, "orelse", []))

    visit(tree.body)
    return frozenset(names), guards
