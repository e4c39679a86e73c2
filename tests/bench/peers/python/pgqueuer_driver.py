"""PgQueuer (PyPI `pgqueuer`, asyncpg driver) for `make bench`: see ../README.md.

    python pgqueuer_driver.py setup|bulk|drain|single|latency

Every connection is a plain asyncpg connection behind pgqueuer's
AsyncpgDriver, as its documentation sets it up; the worker is a QueueManager
on its own connection, run on uvloop as the `pgq run` command does.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import asyncpg
import uvloop

import pgqueuer
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
from pgqueuer.errors import FailingListenerError

import common
from common import Deadline, Failure, Settings, Tally

ENTRYPOINT = "bench"
PAYLOAD = common.JOB_ARGS_JSON.encode()

# The tables a run leaves rows in; pgqueuer_schedules stays empty (no cron).
TABLES = ("pgqueuer", "pgqueuer_log", "pgqueuer_statistics")


def config() -> str:
    # In terms of BENCH_CONCURRENCY, not its value: setup runs with settings
    # of its own, not those of the workloads.
    return (
        f"asyncpg AsyncpgDriver, one connection each; durability=durable (default); "
        f"bulk Queries.enqueue lists of {common.BULK_CHUNK}; "
        f"worker QueueManager on uvloop, run(batch_size=BENCH_CONCURRENCY), "
        f"entrypoint concurrency_limit=BENCH_CONCURRENCY, defaults otherwise "
        f"(dequeue_timeout=30s fallback to NOTIFY, heartbeat 30s)"
    )


async def connect(s: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(s.url)


async def empty(queries: Queries) -> None:
    """Truncate the queue, its log and the statistics folded from the log."""
    await queries.clear_queue()
    await queries.clear_queue_log()
    await queries.clear_statistics_log()


async def count_queue(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM pgqueuer")


async def enqueue_bulk(queries: Queries, jobs: int, deadline: Deadline) -> list[int]:
    """All jobs with list-form Queries.enqueue, BULK_CHUNK per statement."""
    ids: list[int] = []
    for first in range(0, jobs, common.BULK_CHUNK):
        deadline.check("enqueueing in bulk")
        n = min(common.BULK_CHUNK, jobs - first)
        ids += await queries.enqueue([ENTRYPOINT] * n, [PAYLOAD] * n, [0] * n)
    return ids


def worker(conn: asyncpg.Connection, s: Settings, handle: Any) -> QueueManager:
    """A QueueManager whose entrypoint runs at most BENCH_CONCURRENCY jobs.

    The limit is enforced in the dequeue query (picked jobs of the entrypoint,
    until their completion is logged), and batch_size = the limit lets one
    dequeue fill every free handler at once. The alternatives, a per-worker
    max_concurrent_tasks (which needs batch_size <= half of it) or an
    AsyncpgPoolDriver, both drained slower in our measurements.
    """
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    qm.entrypoint(ENTRYPOINT, concurrency_limit=s.concurrency)(handle)
    return qm


def run_worker(qm: QueueManager, s: Settings) -> Any:
    return qm.run(batch_size=s.concurrency)


async def setup(s: Settings, deadline: Deadline) -> dict[str, Any]:
    conn = await connect(s)
    try:
        queries = Queries(AsyncpgDriver(conn))
        # install() fails on an existing schema; upgrade() converges one to
        # this release, so setup is idempotent either way.
        if await queries.schema_is_installed():
            await queries.upgrade()
        else:
            await queries.install()
    finally:
        await conn.close()
    return {"system": "pgqueuer", "version": pgqueuer.__version__, "config": config()}


async def bulk(s: Settings, deadline: Deadline) -> dict[str, Any]:
    conn = await connect(s)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await empty(queries)
        start = time.perf_counter()
        await enqueue_bulk(queries, s.jobs, deadline)
        elapsed = time.perf_counter() - start
        if (found := await count_queue(conn)) != s.jobs:
            raise Failure(f"enqueued {s.jobs} jobs, the queue holds {found}")
    finally:
        await conn.close()
    return common.rate(s.jobs, elapsed)


async def drain(s: Settings, deadline: Deadline) -> dict[str, Any]:
    admin = await connect(s)
    work = await connect(s)
    try:
        queries = Queries(AsyncpgDriver(admin))
        await empty(queries)
        ids = await enqueue_bulk(queries, s.jobs, deadline)
        await admin.execute(f"VACUUM ANALYZE {', '.join(TABLES)}")

        tally = Tally(s.jobs)

        async def handle(job: Job) -> None:
            tally.mark(job.id)
            # The last one stops the worker; leaving run() flushes the
            # completions still buffered, so it returns once all are logged.
            if tally.done.is_set():
                qm.shutdown.set()

        qm = worker(work, s, handle)

        async def stop() -> None:
            qm.shutdown.set()

        stopped, elapsed = await common.run_capped(s, deadline, run_worker(qm, s), stop)
        left = await count_queue(admin)
    finally:
        await work.close()
        await admin.close()
    return common.drain_result(s, tally, ids, stopped, left, elapsed)


async def single(s: Settings, deadline: Deadline) -> dict[str, Any]:
    conns = [await connect(s) for _ in range(s.clients)]
    try:
        await empty(Queries(AsyncpgDriver(conns[0])))

        def enqueuer(conn: asyncpg.Connection) -> Any:
            queries = Queries(AsyncpgDriver(conn))

            # Scalar enqueue: one INSERT, its own transaction (autocommit).
            async def enqueue() -> None:
                await queries.enqueue(ENTRYPOINT, PAYLOAD)

            return enqueue

        jobs, elapsed = await common.run_single(s, deadline, [enqueuer(c) for c in conns])
        if (found := await count_queue(conns[0])) != jobs:
            raise Failure(f"enqueued {jobs} jobs, the queue holds {found}")
    finally:
        for conn in conns:
            await conn.close()
    return common.rate(jobs, elapsed)


async def latency(s: Settings, deadline: Deadline) -> dict[str, Any]:
    work = await connect(s)
    producers = [await connect(s) for _ in range(common.LATENCY_PRODUCERS)]
    try:
        await empty(Queries(AsyncpgDriver(producers[0])))
        total = max(1, int(s.rate * s.seconds))
        tally = Tally(total)
        committed: dict[int, float] = {}
        started: dict[int, float] = {}

        async def handle(job: Job) -> None:
            now = time.perf_counter()
            assert job.payload is not None
            n = json.loads(job.payload)["n"]
            started.setdefault(n, now)
            tally.mark(n)

        qm = worker(work, s, handle)
        running = asyncio.create_task(run_worker(qm, s))
        await wait_listening(qm, running, deadline)

        def enqueuer(conn: asyncpg.Connection) -> Any:
            queries = Queries(AsyncpgDriver(conn))

            async def enqueue(n: int) -> None:
                payload = json.dumps({**common.JOB_ARGS, "n": n}).encode()
                await queries.enqueue(ENTRYPOINT, payload)

            return enqueue

        await common.run_producers(s, deadline, [enqueuer(c) for c in producers], committed)
        await deadline.wait(tally.done.wait(), "waiting for the latency jobs")
        qm.shutdown.set()
        await deadline.wait(running, "stopping the worker")
        tally.verify(range(total))
    finally:
        for conn in [work, *producers]:
            await conn.close()
    return common.latency_result(committed, started)


async def wait_listening(qm: QueueManager, running: asyncio.Task[None], deadline: Deadline) -> None:
    """Until the worker's LISTEN is in place, so no job's NOTIFY is missed and
    the first jobs measure the worker, not its start."""
    for _ in range(100):
        deadline.check("starting the worker")
        if running.done():
            running.result()
            raise Failure("the worker stopped before it listened")
        try:
            await qm.listener_healthy(timeout=timedelta(seconds=0.1))
            return
        except FailingListenerError:
            continue
    raise Failure("the worker did not start listening")


if __name__ == "__main__":
    common.main(
        {"setup": setup, "bulk": bulk, "drain": drain, "single": single, "latency": latency},
        run=uvloop.run,
    )
