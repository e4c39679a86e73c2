"""What the Python peer drivers share: the protocol of ../README.md.

Settings from the environment, the clock, the exactly-once tally, the producer
loops of `single` and `latency`, percentiles, the JSON result line and the
BENCH_TIMEOUT guard. Each driver only supplies its queue's own calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Any

# The args of every job, as README.md gives them; latency jobs add "n".
JOB_ARGS: dict[str, Any] = {"user_id": 123456, "template": "welcome"}
JOB_ARGS_JSON = json.dumps(JOB_ARGS)

WORKLOADS = ("setup", "bulk", "drain", "single", "latency")

# Jobs per call of a bulk enqueue (each call its own transaction): both queues
# measured faster at 5000 than at 500 or 1000 and no slower than at 10000,
# and one statement's parameters stay well under a megabyte.
BULK_CHUNK = 5000

# Producers sharing BENCH_RATE in `latency`, each on its own connection, so one
# slow commit does not hold back the schedule of the others.
LATENCY_PRODUCERS = 4

# Upper bound on the jobs one client may enqueue in `single`: a loop bound far
# above any real rate (100k jobs/s per client), the clock ends it long before.
SINGLE_MAX_PER_CLIENT_PER_SECOND = 100_000

# Grace after BENCH_TIMEOUT before the guard thread ends the process, for the
# in-loop checks and the cancellation to report the reason first.
GUARD_GRACE_SECONDS = 5.0

log = logging.getLogger("bench")


class Failure(Exception):
    """A reason to exit non-zero: a job lost or handled twice, a timeout."""


@dataclasses.dataclass(frozen=True)
class Settings:
    url: str
    jobs: int
    concurrency: int
    clients: int
    seconds: float
    rate: int
    timeout: float
    # A drain still running after this many seconds is stopped and reports
    # the rate of what it finished (see run_capped).
    drain_seconds: float


def _positive(name: str, default: str, kind: Callable[[str], Any] = int) -> Any:
    raw = os.environ.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        raise Failure(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise Failure(f"{name}={raw!r} must be positive")
    return value


def settings() -> Settings:
    url = os.environ.get("BENCH_URL", "")
    if not url:
        raise Failure("BENCH_URL is required")
    return Settings(
        url=url,
        jobs=_positive("BENCH_JOBS", "100000"),
        concurrency=_positive("BENCH_CONCURRENCY", "16"),
        clients=_positive("BENCH_CLIENTS", "8"),
        seconds=_positive("BENCH_SECONDS", "10", float),
        rate=_positive("BENCH_RATE", "500"),
        timeout=_positive("BENCH_TIMEOUT", "600", float),
        drain_seconds=_positive("BENCH_DRAIN_SECONDS", "120", float),
    )


class Deadline:
    """BENCH_TIMEOUT counted from the driver's start, checked by every loop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.perf_counter() + seconds

    def left(self) -> float:
        return max(0.0, self.at - time.perf_counter())

    def check(self, doing: str) -> None:
        if time.perf_counter() >= self.at:
            raise Failure(f"BENCH_TIMEOUT ({self.seconds:g}s) passed while {doing}")

    async def wait(self, awaitable: Awaitable[Any], doing: str) -> Any:
        """Await within the time left, as a Failure naming what was awaited."""
        try:
            return await asyncio.wait_for(awaitable, self.left())
        except asyncio.TimeoutError:
            raise Failure(
                f"BENCH_TIMEOUT ({self.seconds:g}s) passed while {doing}"
            ) from None


class Tally:
    """Counts each job's handler run, by a key the job carries (id or number).

    `done` is set once `expected` distinct keys were seen; a key seen twice is
    kept so `verify` fails the run even though the count was reached.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen: set[Hashable] = set()
        self.twice: list[Hashable] = []
        self.done = asyncio.Event()

    def mark(self, key: Hashable) -> None:
        if key in self.seen:
            self.twice.append(key)
        else:
            self.seen.add(key)
        if len(self.seen) >= self.expected:
            self.done.set()

    def verify(self, keys: Iterable[Hashable], acknowledged: int | None = None) -> None:
        """Every key handled exactly once; or, for a drain stopped early with
        `acknowledged` jobs finished, none twice and at least that many."""
        keys = set(keys)
        if self.twice:
            raise Failure(f"{len(self.twice)} job(s) handled twice, e.g. {self.twice[:5]}")
        if acknowledged is not None:
            if acknowledged > len(self.seen):
                raise Failure(f"{acknowledged} job(s) acknowledged, {len(self.seen)} handled")
        elif missing := keys - self.seen:
            raise Failure(f"{len(missing)} job(s) never handled, e.g. {sorted(missing)[:5]}")
        extra = self.seen - keys
        if extra:
            raise Failure(f"{len(extra)} unknown job(s) handled, e.g. {sorted(extra)[:5]}")


def rate(jobs: int, seconds: float) -> dict[str, float]:
    return {"rate": round(jobs / seconds, 1)}


def drain_result(
    s: Settings, tally: Tally, ids: Iterable[Hashable], stopped: bool, left: int, seconds: float
) -> dict[str, float]:
    """Check a drain that left `left` jobs unacknowledged and return its rate.

    A drain that ran to the end must have handled every job once and left
    none; one stopped by BENCH_DRAIN_SECONDS handled none twice and at least
    those it acknowledged, and its result also says how many of the
    BENCH_JOBS jobs that was."""
    acknowledged = s.jobs - left
    tally.verify(ids, acknowledged if stopped else None)
    if not stopped and left != 0:
        raise Failure(f"{left} job(s) still in the queue after the drain")
    result = rate(acknowledged, seconds)
    if acknowledged < s.jobs:
        result["jobs"] = acknowledged
    return result


async def run_capped(
    s: Settings,
    deadline: Deadline,
    worker: Awaitable[Any],
    stop: Callable[[], Awaitable[None]],
) -> tuple[bool, float]:
    """Run a drain's worker until it returns by itself (every job done) or
    BENCH_DRAIN_SECONDS pass; then `stop` asks it to finish gracefully (its
    running jobs complete and are acknowledged) and we wait for that.

    Returns whether the drain was stopped, and the seconds from the start
    until the worker returned. The slowest queues need many minutes for
    100,000 jobs (far longer with vacuum blocked); their rate over the first
    two minutes is what a steady drain shows, at a fraction of the time.
    """
    start = time.perf_counter()
    task = asyncio.ensure_future(worker)
    done, _ = await asyncio.wait({task}, timeout=min(s.drain_seconds, deadline.left()))
    stopped = not done
    if stopped:
        await stop()
    await deadline.wait(task, "draining")
    return stopped, time.perf_counter() - start


async def run_single(
    s: Settings,
    deadline: Deadline,
    enqueuers: Sequence[Callable[[], Awaitable[None]]],
) -> tuple[int, float]:
    """Each enqueuer (one per client connection) enqueues one job per call,
    back to back, for BENCH_SECONDS; returns the jobs and the seconds from the
    start to the last commit."""
    bound = int(SINGLE_MAX_PER_CLIENT_PER_SECOND * s.seconds)
    start = time.perf_counter()
    end = start + s.seconds
    last = start
    done = 0

    async def client(enqueue: Callable[[], Awaitable[None]]) -> None:
        nonlocal last, done
        for _ in range(bound):
            if time.perf_counter() >= end:
                return
            deadline.check("enqueueing single jobs")
            await enqueue()
            done += 1
            last = time.perf_counter()

    await asyncio.gather(*(client(e) for e in enqueuers))
    return done, last - start


async def run_producers(
    s: Settings,
    deadline: Deadline,
    enqueuers: Sequence[Callable[[int], Awaitable[None]]],
    committed: dict[int, float],
) -> int:
    """Enqueue jobs 0..total-1 at a steady BENCH_RATE for BENCH_SECONDS.

    Job n is due at start + n / rate; the producers take the numbers in turn,
    so each keeps its own share of the schedule. The time each enqueue call
    returned (its commit) goes into `committed`. Returns the number of jobs.
    """
    total = max(1, int(s.rate * s.seconds))
    start = time.perf_counter()

    async def producer(first: int, enqueue: Callable[[int], Awaitable[None]]) -> None:
        for n in range(first, total, len(enqueuers)):
            deadline.check("enqueueing latency jobs")
            due = start + n / s.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await enqueue(n)
            committed[n] = time.perf_counter()

    await asyncio.gather(*(producer(i, e) for i, e in enumerate(enqueuers)))
    return total


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_result(committed: dict[int, float], started: dict[int, float]) -> dict[str, Any]:
    """p50/p99/max of handler start minus commit return, over every job.

    A handler that started before its producer saw the commit return counts
    as 0: the job was already running when the enqueue call came back.
    """
    missing = committed.keys() - started.keys()
    if missing:
        raise Failure(f"{len(missing)} latency job(s) never handled, e.g. {sorted(missing)[:5]}")
    millis = sorted(max(0.0, started[n] - t) * 1000 for n, t in committed.items())
    return {
        "p50_ms": round(percentile(millis, 50), 3),
        "p99_ms": round(percentile(millis, 99), 3),
        "max_ms": round(millis[-1], 3),
        "jobs": len(millis),
    }


def _start_guard(seconds: float) -> None:
    """A last resort for a hang no await can interrupt (a blocking call inside
    a library): end the process, non-zero, shortly after BENCH_TIMEOUT."""

    def fire() -> None:
        print(f"BENCH_TIMEOUT ({seconds:g}s) passed: giving up", file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(seconds + GUARD_GRACE_SECONDS, fire)
    timer.daemon = True
    timer.start()


def main(
    workloads: dict[str, Callable[[Settings, Deadline], Awaitable[dict[str, Any]]]],
    run: Callable[[Awaitable[dict[str, Any]]], dict[str, Any]] = asyncio.run,
) -> None:
    """Run the workload named on the command line and print its JSON line.

    `run` is the event loop runner (asyncio.run, or uvloop.run for a queue
    whose own worker runs on uvloop).
    """
    # The result is the only thing on stdout: whatever a library prints goes
    # to stderr with its logs.
    stdout, sys.stdout = sys.stdout, sys.stderr
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("BENCH_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        if len(sys.argv) != 2 or sys.argv[1] not in workloads:
            raise Failure(f"usage: {sys.argv[0]} {'|'.join(workloads)}")
        s = settings()
        _start_guard(s.timeout)
        deadline = Deadline(s.timeout)
        # The whole workload is bounded too, for the awaits no loop checks
        # (connecting, one enqueue call); the loops name what timed out.
        workload = workloads[sys.argv[1]](s, deadline)
        result = run(deadline.wait(workload, f"running {sys.argv[1]}"))
    except Failure as e:
        print(f"{sys.argv[1] if len(sys.argv) > 1 else ''}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except BaseException as e:  # noqa: BLE001 - any error is a failed run
        if isinstance(e, SystemExit):
            raise
        traceback.print_exc(file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result), file=stdout, flush=True)
