"""Large payloads travel through shared memory (the worker's arena, see
``crates/hangfree/src/arena.rs``): round trips at the sizes around the threshold and
far above it, buffers of every kind, results kept while later ones reuse the arena, and a
worker killed while it writes a large result."""

from __future__ import annotations

import os
import pickle

import pytest

import hangfree
import tasks
from hangfree._pickling import OOB_MIN

MiB = 1 << 20
# The engine's threshold (hangfree::arena::THRESHOLD): payloads from this size go through
# the arena. A payload is a little larger than the buffer it carries, so the sizes below
# straddle it from both sides. Up to hangfree::arena::MAX_PAYLOAD; larger payloads stay
# on the channel.
THRESHOLD = 64 * 1024
MAX_PAYLOAD = 4 * MiB + 64 * 1024


@pytest.fixture
def pool():
    with hangfree.Pool(2) as p:
        yield p


@pytest.mark.parametrize("size", [0, 1, OOB_MIN - 1, THRESHOLD - 200, THRESHOLD - 1, THRESHOLD, THRESHOLD + 1,
                                  MiB, 4 * MiB, MAX_PAYLOAD - 200, MAX_PAYLOAD + 1, 64 * MiB])
def test_bytes_and_bytearrays_of_every_size_come_back_as_they_went(pool, size):
    data = os.urandom(size)
    back = pool.apply(tasks.identity, (data,))
    assert type(back) is bytes and back == data
    back = pool.apply(tasks.identity, (bytearray(data),))
    assert type(back) is bytearray and back == data


def test_the_pool_maps_its_workers_arenas(pool):
    pool.apply(tasks.identity, (bytes(MiB),))
    with open("/proc/self/maps") as f:
        assert "/memfd:hangfree-arena" in f.read()


def test_the_executor_moves_large_payloads_too():
    data = os.urandom(3 * MiB)
    with hangfree.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(tasks.identity, [data] * 6)) == [data] * 6


def test_numpy_arrays_keep_dtype_shape_and_writability(pool):
    np = pytest.importorskip("numpy")
    a = np.arange(MiB, dtype=np.float64).reshape(1024, 1024)
    back = pool.apply(tasks.identity, (a,))
    assert back.dtype == a.dtype and back.shape == a.shape and (back == a).all()
    back[0, 0] = -1  # the caller's copy is its own
    assert a[0, 0] == 0
    ro = np.arange(THRESHOLD, dtype=np.int32)
    ro.flags.writeable = False
    assert (pool.apply(tasks.identity, (ro,)) == ro).all()


def test_nested_buffers_arrive_at_every_depth(pool):
    x = os.urandom(200_000)
    back = pool.apply(tasks.nested_buffers, (x,))
    assert back == {"list": [x, bytearray(x)], "tuple": (x,), "deep": {"b": [[x]]}}
    assert type(back["list"][1]) is bytearray


def test_large_map_items_and_chunks(pool):
    items = [os.urandom(100_000 + i) for i in range(40)]
    assert pool.map(tasks.identity, items, chunksize=7) == items
    assert list(pool.imap(tasks.identity, items, chunksize=3)) == items


def test_results_kept_by_the_caller_do_not_change_while_more_arrive(pool):
    np = pytest.importorskip("numpy")
    kept = [pool.apply(tasks.pattern, (i, 2 * MiB)) for i in range(4)]
    arrays = [pool.apply(tasks.pattern_array, (i, MiB // 8)) for i in range(4)]
    views = [memoryview(k) for k in kept]
    # Many more large results through the same arenas, all at once.
    later = [pool.apply_async(tasks.pattern, (100 + i, 3 * MiB)) for i in range(40)]
    assert [r.get(timeout=60) for r in later] == [bytes([100 + i]) * 3 * MiB for i in range(40)]
    for i in range(4):
        assert kept[i] == bytes([i]) * 2 * MiB
        assert views[i].tobytes() == bytes([i]) * 2 * MiB
        assert (arrays[i] == i).all() and arrays[i].dtype == np.int64


def test_large_arguments_the_caller_drops_after_submitting_still_arrive(pool):
    # The engine reads a large bytes argument where the object is: it must keep it alive.
    import gc

    rs = []
    for i in range(8):
        data = bytes([i]) * (3 * MiB)
        rs.append(pool.apply_async(tasks.identity, (data,)))
        del data
        gc.collect()
    assert [r.get(timeout=60) for r in rs] == [bytes([i]) * (3 * MiB) for i in range(8)]


def test_arguments_the_caller_changes_after_submitting_arrive_as_submitted(pool):
    data = bytearray(b"a" * MiB)
    rs = [pool.apply_async(tasks.identity, (data,)) for _ in range(8)]
    data[:] = b"b" * MiB
    assert all(r.get(timeout=60) == b"a" * MiB for r in rs)


@pytest.mark.timeout(120)
def test_a_worker_killed_while_it_writes_a_large_result_loses_only_that_task(tmp_path):
    log = tmp_path / "runs"
    size = 4 * MiB  # through the arena; copying it in takes about a millisecond
    with hangfree.Pool(1) as p:
        for i, delay in enumerate([0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02]):
            r = p.apply_async(tasks.big_result_then_killed, (str(log), size, delay))
            try:
                got = r.get(timeout=60)
            except hangfree.WorkerLostError:
                pass
            else:
                # The copy finished first: the whole result, never a torn one.
                assert got == b"r" * size
            # Run once, never again (no retries), and the next worker's arena works.
            assert len(log.read_text().split()) == i + 1
            data = os.urandom(5 * MiB)
            assert p.apply(tasks.identity, (data,)) == data


def test_a_payload_with_large_buffers_is_not_mistaken_for_a_small_one(pool):
    # A payload just around the threshold, with and without out-of-band buffers.
    for n in (OOB_MIN - 1, OOB_MIN, THRESHOLD + 5):
        value = [pickle.PickleBuffer(bytearray(n)), b"x" * (n // 2)]
        back = pool.apply(tasks.identity, (value,))
        assert back == [bytearray(n), b"x" * (n // 2)]
