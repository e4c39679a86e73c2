"""Procrastinate (PyPI `procrastinate`, psycopg 3 connector) for `make bench`:
see ../README.md.

    python procrastinate_driver.py setup|bulk|drain|single|latency

One App with a PsycopgConnector (its psycopg_pool pool); the worker is the
App's own, run_worker_async, in this process; finished jobs are deleted
(delete_jobs="always"), the documented way to keep the jobs table small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

import procrastinate
from procrastinate import App, JobContext, PsycopgConnector

import common
from common import Deadline, Failure, Settings, Tally

QUEUE = "bench"

# Everything a run leaves rows in; truncated together, as they reference
# each other (events and periodic defers point at jobs, jobs at workers).
TABLES = (
    "procrastinate_jobs",
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_workers",
)


def pool_size(s: Settings) -> int:
    """Connections in the App's pool: one per handler, so finishing jobs never
    waits for one, plus the worker's fetch loop and heartbeat. (The listener
    has a connection of its own.)"""
    return s.concurrency + 2


def worker_options(s: Settings) -> dict[str, Any]:
    return {
        "queues": [QUEUE],
        "concurrency": s.concurrency,
        "delete_jobs": "always",
        # The process's signals stay with common.main and its timeout guard.
        "install_signal_handlers": False,
    }


def config() -> str:
    # In terms of BENCH_CONCURRENCY, not its value: setup runs with settings
    # of its own, not those of the workloads.
    return (
        f"psycopg 3 PsycopgConnector, pool min=max=BENCH_CONCURRENCY+2 "
        f"(single: BENCH_CLIENTS); bulk batch_defer_async of {common.BULK_CHUNK}; "
        f"worker run_worker_async(concurrency=BENCH_CONCURRENCY, delete_jobs=always, "
        f"listen_notify=True, wait=False to drain), asyncio loop"
    )


# What the task does with each job it runs, set by the workload before the
# worker starts: it gets the job's id and, in latency, its number.
on_job: Callable[[int, int | None], None] = lambda job_id, n: None


def make_app(s: Settings, connections: int) -> tuple[App, Any]:
    app = App(
        connector=PsycopgConnector(conninfo=s.url, min_size=connections, max_size=connections)
    )

    @app.task(name="bench_noop", queue=QUEUE, pass_context=True)
    async def noop(context: JobContext, user_id: int, template: str, n: int | None = None) -> None:
        assert context.job.id is not None
        on_job(context.job.id, n)

    return app, noop


async def admin(s: Settings) -> psycopg.AsyncConnection:
    # Autocommit: VACUUM cannot run in a transaction block.
    return await psycopg.AsyncConnection.connect(s.url, autocommit=True)


async def scalar(conn: psycopg.AsyncConnection, sql: str) -> Any:
    cur = await conn.execute(sql)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def empty(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(f"TRUNCATE {', '.join(TABLES)}")


async def count_jobs(conn: psycopg.AsyncConnection) -> int:
    return await scalar(conn, "SELECT count(*) FROM procrastinate_jobs")


async def defer_bulk(noop: Any, jobs: int, deadline: Deadline) -> list[int]:
    """All jobs with batch_defer_async: one INSERT per BULK_CHUNK jobs."""
    ids: list[int] = []
    for first in range(0, jobs, common.BULK_CHUNK):
        deadline.check("deferring in bulk")
        n = min(common.BULK_CHUNK, jobs - first)
        ids += await noop.batch_defer_async(*([common.JOB_ARGS] * n))
    return ids


async def setup(s: Settings, deadline: Deadline) -> dict[str, Any]:
    app, _ = make_app(s, 1)
    async with app.open_async():
        conn = await admin(s)
        try:
            # The schema file is not idempotent (CREATE TABLE ...): apply it
            # only to a database that has none yet.
            if not await scalar(conn, "SELECT to_regclass('procrastinate_jobs') IS NOT NULL"):
                await app.schema_manager.apply_schema_async()
        finally:
            await conn.close()
    return {"system": "procrastinate", "version": procrastinate.__version__, "config": config()}


async def bulk(s: Settings, deadline: Deadline) -> dict[str, Any]:
    app, noop = make_app(s, 1)
    conn = await admin(s)
    try:
        await empty(conn)
        async with app.open_async():
            start = time.perf_counter()
            await defer_bulk(noop, s.jobs, deadline)
            elapsed = time.perf_counter() - start
        if (found := await count_jobs(conn)) != s.jobs:
            raise Failure(f"deferred {s.jobs} jobs, the table holds {found}")
    finally:
        await conn.close()
    return common.rate(s.jobs, elapsed)


async def drain(s: Settings, deadline: Deadline) -> dict[str, Any]:
    global on_job
    app, noop = make_app(s, pool_size(s))
    conn = await admin(s)
    try:
        await empty(conn)
        async with app.open_async():
            ids = await defer_bulk(noop, s.jobs, deadline)
            await conn.execute(f"VACUUM ANALYZE {', '.join(TABLES)}")

            tally = Tally(s.jobs)
            on_job = lambda job_id, n: tally.mark(job_id)  # noqa: E731
            # wait=False: the worker stops once it finds no job left, and
            # returns after its running jobs are finished and acknowledged.
            worker = asyncio.ensure_future(app.run_worker_async(**worker_options(s), wait=False))

            async def stop() -> None:
                # Cancelling run_worker_async is procrastinate's graceful
                # stop: no new fetch, running jobs finish and are recorded.
                worker.cancel()

            stopped, elapsed = await common.run_capped(s, deadline, graceful(worker), stop)

        left = await count_jobs(conn)
    finally:
        await conn.close()
    return common.drain_result(s, tally, ids, stopped, left, elapsed)


async def graceful(worker: asyncio.Future[Any]) -> None:
    """The worker task, with the cancellation of its graceful stop absorbed."""
    with contextlib.suppress(asyncio.CancelledError):
        await worker


async def single(s: Settings, deadline: Deadline) -> dict[str, Any]:
    # A pool of BENCH_CLIENTS connections, used by as many concurrent
    # clients: each defer_async holds one connection for its own transaction.
    app, noop = make_app(s, s.clients)
    conn = await admin(s)
    try:
        await empty(conn)
        async with app.open_async():

            async def enqueue() -> None:
                await noop.defer_async(**common.JOB_ARGS)

            jobs, elapsed = await common.run_single(s, deadline, [enqueue] * s.clients)
        if (found := await count_jobs(conn)) != jobs:
            raise Failure(f"deferred {jobs} jobs, the table holds {found}")
    finally:
        await conn.close()
    return common.rate(jobs, elapsed)


async def latency(s: Settings, deadline: Deadline) -> dict[str, Any]:
    global on_job
    # The worker's connections plus one per producer, so producers never
    # wait for a connection the worker holds.
    app, noop = make_app(s, pool_size(s) + common.LATENCY_PRODUCERS)
    conn = await admin(s)
    try:
        await empty(conn)
        total = max(1, int(s.rate * s.seconds))
        tally = Tally(total)
        committed: dict[int, float] = {}
        started: dict[int, float] = {}

        def record(job_id: int, n: int | None) -> None:
            assert n is not None
            started.setdefault(n, time.perf_counter())
            tally.mark(n)

        on_job = record
        async with app.open_async():
            running = asyncio.create_task(app.run_worker_async(**worker_options(s), wait=True))
            await wait_listening(conn, running, deadline)

            async def enqueue(n: int) -> None:
                await noop.defer_async(**common.JOB_ARGS, n=n)

            await common.run_producers(
                s, deadline, [enqueue] * common.LATENCY_PRODUCERS, committed
            )
            await deadline.wait(tally.done.wait(), "waiting for the latency jobs")
            # Cancelling run_worker_async is its documented graceful stop.
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deadline.wait(running, "stopping the worker")
        tally.verify(range(total))
    finally:
        await conn.close()
    return common.latency_result(committed, started)


async def wait_listening(
    conn: psycopg.AsyncConnection, running: asyncio.Task[None], deadline: Deadline
) -> None:
    """Until the worker's listener connection has run its LISTEN, so the
    first jobs measure the worker, not its start."""
    for _ in range(200):
        deadline.check("starting the worker")
        if running.done():
            running.result()
            raise Failure("the worker stopped before it listened")
        listening = await scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query ILIKE 'LISTEN %'",
        )
        if listening:
            return
        await asyncio.sleep(0.05)
    raise Failure("the worker did not start listening")


if __name__ == "__main__":
    # The App lives in the script run as __main__, which procrastinate warns
    # about: a worker in another process could not import its tasks. This
    # worker runs in the same process and finds the task by its name.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    common.main({"setup": setup, "bulk": bulk, "drain": drain, "single": single, "latency": latency})
