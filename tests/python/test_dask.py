"""Dask integration (``hangfree.dask``) with real Dask: the local scheduler on a hangfree
executor, and a ``distributed.LocalCluster`` of 2 worker processes whose tasks, routed
to the hangfree executor by annotation, segfault and hang without killing a Dask worker.
The same workload without the plugin shows what Dask alone does."""

from __future__ import annotations

import json

import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import hangfree  # noqa: E402
import helpers  # noqa: E402
import dask_tasks as dt  # noqa: E402

N = 200


def inc(x: int) -> int:
    return x + 1


def test_the_local_scheduler_runs_on_a_hangfree_executor():
    import dask.bag as db

    with hangfree.ProcessPoolExecutor(2) as ex:
        total = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(10)])
        assert dask.compute(total, scheduler=ex) == (55,)
        assert db.from_sequence(range(10), npartitions=4).map(inc).sum().compute(scheduler=ex) == 55
        with pytest.raises(hangfree.WorkerLostError):
            db.from_sequence([17], npartitions=1).map(dt.risky).compute(scheduler=ex)
        assert dask.compute(total, scheduler=ex) == (55,), "the executor goes on serving"


@pytest.mark.timeout(400)
def test_distributed_crashes_and_hangs_are_task_errors_with_no_worker_restart():
    """200 tasks, 5 segfaults and 3 hangs, annotated to run in the hangfree executor of
    a 2-process LocalCluster: 192 values, 5 WorkerLostError, 3 TaskTimeoutError, and no
    Dask worker replaced. Then Dask alone, in its own executor, on the first 40 of those
    tasks (one segfault, no hang): its workers die and are replaced, and the task ends as
    KilledWorker (printed for comparison)."""
    env = helpers.script_env()
    proc, took = helpers.run_python([str(helpers.TESTS_DIR / "dask_cluster.py"), "40", "60"], timeout=360, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    mine, alone = report["hangfree"], report["dask_alone"]
    assert mine["values"] == [2 * x for x in range(200) if x not in dt.SEGFAULTS | dt.HANGS], mine["examples"]
    assert mine["errors"] == {"WorkerLostError": len(dt.SEGFAULTS), "TaskTimeoutError": len(dt.HANGS)}, mine
    assert mine["restarted"] == [], "no Dask worker may be replaced"
    print(f"\nhangfree executor: {len(mine['values'])} values, {mine['errors']}, no Dask worker replaced "
          f"({took:.0f} s in all); Dask alone on 40 tasks with 1 segfault: {alone}")
    assert alone["replaced"] >= 1 or alone["unfinished"] > 0, alone


def test_importing_hangfree_does_not_import_dask():
    import subprocess
    import sys

    code = "import sys, hangfree; hangfree.Pool; hangfree.ProcessPoolExecutor; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
