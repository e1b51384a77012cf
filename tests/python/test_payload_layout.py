"""The out-of-band payload layout is written and read by the engine (``hangfree::oob``):
the Python package only hands it lengths and takes back where each part is."""

from __future__ import annotations

import pickle

import pytest

from hangfree import _core
from hangfree._pickling import OOB_MIN, dumps, dumps_result, loads


def _large() -> pickle.PickleBuffer:
    """A writable buffer, which travels out of band."""
    return pickle.PickleBuffer(bytearray(b"x" * OOB_MIN))


def test_large_buffers_round_trip_with_their_type_and_mutability():
    parts = dumps_result([_large(), pickle.PickleBuffer(bytes(OOB_MIN)), "small"])
    assert isinstance(parts, list) and parts[0][0] == _core.OOB_MARKER and len(parts) == 4
    back = loads(b"".join(parts))
    assert back == [bytearray(b"x" * OOB_MIN), bytes(OOB_MIN), "small"] and type(back[0]) is bytearray
    back[0][0] = 0
    assert memoryview(back[1]).readonly


def test_a_payload_read_up_to_an_end_ignores_what_follows():
    data = dumps(_large())
    assert loads(data + b"trailer!", len(data)) == bytearray(b"x" * OOB_MIN)
    plain = dumps("small")
    assert loads(plain + b"trailer!", len(plain)) == "small"


def test_a_layout_whose_lengths_do_not_add_up_is_a_value_error():
    data = dumps(_large())
    with pytest.raises(ValueError, match="out-of-band payload"):
        loads(data[:-1])
    with pytest.raises(ValueError, match="out-of-band payload"):
        loads(data + b"x")
