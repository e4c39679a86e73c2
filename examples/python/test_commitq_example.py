"""The example's promises, checked against a real server: run by
tests/stacks/run.sh, which points libpq's PG* variables at a fresh database
with pg_commitq installed."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from commitq_example import WaitingWorker, Worker, enqueue, place_order, send_receipt

HERE = Path(__file__).resolve().parent
GUIDE = HERE.parent.parent / "docs" / "python.md"


def connect():
    return psycopg.connect("", autocommit=True)


def wait_for(what, check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"waited {timeout} s for {what}")


@pytest.fixture(scope="session", autouse=True)
def schema():
    with connect() as db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, email text NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS receipts (order_id bigint NOT NULL, attempt int NOT NULL)")
        # Short backoffs so a retry comes within the test; finished jobs kept to read their history.
        db.execute("UPDATE commitq.config SET backoff_base = '50 ms', backoff_cap = '200 ms', keep_completed = true")


@pytest.fixture
def db():
    with connect() as db:
        db.execute("TRUNCATE orders, receipts, commitq.jobs, commitq.finished_jobs, commitq.waiting_workers,"
                   " commitq.idempotency_keys")
        yield db


@pytest.fixture
def start_worker():
    started = []

    def start(queue, handlers, **options):
        worker = Worker("", queue, handlers, name=f"test-{queue}", **options)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "worker did not stop"


def receipts(db):
    return db.execute("SELECT order_id, attempt FROM receipts ORDER BY order_id, attempt").fetchall()


def waiting(db, worker):
    return db.execute("SELECT count(*) FROM commitq.waiting_workers WHERE worker = %s",
                      (worker.name,)).fetchone()[0] == 1


def finished(db, queue):
    return db.execute("SELECT state::text, attempt, errors FROM commitq.finished_jobs WHERE queue = %s",
                      (queue,)).fetchall()


def test_committed_job_runs_exactly_once_woken_by_listen(db, start_worker):
    # A minute of polling: only the notification can bring the job in time.
    worker = start_worker("mail", {"send_receipt": send_receipt}, poll=60)
    wait_for("the worker to wait", lambda: waiting(db, worker))
    place_order(db, 1, "ada@example.com")
    wait_for("the job to finish", lambda: finished(db, "mail"), timeout=5)
    time.sleep(0.3)  # room for a second run, which must not come
    assert receipts(db) == [(1, 1)]
    assert [(s, a) for s, a, _ in finished(db, "mail")] == [("completed", 1)]


def test_waiting_claim_runs_a_committed_job_at_once_without_listen(db):
    # A long wait: only a commit ends it in time. Nothing registers for NOTIFY.
    worker = WaitingWorker("", "mail", {"send_receipt": send_receipt}, name="test-waiting", poll=30)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for("the worker to wait", lambda: db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL commitq.claim_wait%%'"
            " AND wait_event_type = 'Extension'").fetchone()[0] == 1)
        place_order(db, 7, "eve@example.com")
        wait_for("the job to finish", lambda: finished(db, "mail"), timeout=5)
        assert receipts(db) == [(7, 1)]
        assert db.execute("SELECT count(*) FROM commitq.waiting_workers").fetchone()[0] == 0
    finally:
        worker.stop()
        # The wait in progress ends within its 30 s; cancel it to stop now.
        db.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                   " WHERE query LIKE 'CALL commitq.claim_wait%%' AND pid <> pg_backend_pid()")
        thread.join(10)


def test_rolled_back_job_never_runs(db, start_worker):
    worker = start_worker("mail", {"send_receipt": send_receipt}, poll=60)
    wait_for("the worker to wait", lambda: waiting(db, worker))
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.execute("INSERT INTO orders (id, email) VALUES (2, 'bob@example.com')")
            enqueue(db, "mail", "send_receipt", {"order_id": 2})
            raise RuntimeError("the request failed")
    assert db.execute("SELECT count(*) FROM commitq.jobs").fetchone()[0] == 0
    place_order(db, 3, "cy@example.com")  # enqueued after it: runs after it, had it existed
    wait_for("the later job", lambda: receipts(db) == [(3, 1)], timeout=5)
    time.sleep(0.3)
    assert receipts(db) == [(3, 1)]


def test_failing_handler_is_failed_and_retried(db, start_worker):
    def flaky(conn, job):
        if job.attempt == 1:
            raise RuntimeError("mail provider down")
        send_receipt(conn, job)

    start_worker("flaky", {"send_receipt": flaky}, poll=0.5)
    with db.transaction():
        enqueue(db, "flaky", "send_receipt", {"order_id": 4})
    wait_for("the retry to finish", lambda: finished(db, "flaky"))
    [(state, attempt, errors)] = finished(db, "flaky")
    assert (state, attempt) == ("completed", 2)
    assert [e["attempt"] for e in errors] == [1] and "mail provider down" in errors[0]["error"]
    assert receipts(db) == [(4, 2)]


def test_handler_writes_roll_back_with_a_failed_attempt(db, start_worker):
    def writes_then_fails(conn, job):
        send_receipt(conn, job)  # written in the job's transaction...
        if job.attempt == 1:
            raise RuntimeError("crashed after writing")  # ...so gone with it

    start_worker("partial", {"send_receipt": writes_then_fails}, poll=0.5)
    with db.transaction():
        enqueue(db, "partial", "send_receipt", {"order_id": 5})
    wait_for("the retry to finish", lambda: finished(db, "partial"))
    assert receipts(db) == [(5, 2)]


def test_killed_worker_leaves_no_write_and_its_job_is_retried(db, start_worker):
    with db.transaction():
        enqueue(db, "killed", "send_receipt", {"order_id": 6})
    child = subprocess.Popen([sys.executable, __file__, "write-and-hang"], stdout=subprocess.PIPE,
                             text=True, cwd=HERE)
    try:
        assert child.stdout.readline().strip() == "written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert receipts(db) == []
    # Its lease (1 s) runs out without heartbeats; maintain() puts the job back
    # (or the engine does first, where the server preloads pg_commitq).
    def rescued():
        db.execute("SELECT commitq.maintain()")
        states = db.execute("SELECT state::text FROM commitq.jobs WHERE queue = 'killed'").fetchall()
        return len(states) == 1 and states[0][0] != "running"
    wait_for("the rescue", rescued)
    start_worker("killed", {"send_receipt": send_receipt}, poll=0.5)
    wait_for("the retry to finish", lambda: finished(db, "killed"))
    assert receipts(db) == [(6, 2)]


def test_heartbeats_keep_the_lease_of_a_long_job(db, start_worker):
    def slow(conn, job):
        time.sleep(4.5)  # more than twice the lease
        send_receipt(conn, job)

    start_worker("slow", {"send_receipt": slow}, lease=2, poll=0.5)
    with db.transaction():
        enqueue(db, "slow", "send_receipt", {"order_id": 7})
    wait_for("the job to finish", lambda: finished(db, "slow"))
    assert [(s, a) for s, a, _ in finished(db, "slow")] == [("completed", 1)]
    assert receipts(db) == [(7, 1)]


def test_a_stopped_worker_stops_waiting(db):
    worker = Worker("", "idle", {}, name="test-idle", poll=60)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for("the worker to wait", lambda: waiting(db, worker))
    worker.stop()
    thread.join(5)
    assert not thread.is_alive() and not waiting(db, worker)


def test_the_guide_shows_this_example():
    assert f"```python\n{(HERE / 'commitq_example.py').read_text()}```" in GUIDE.read_text()


if __name__ == "__main__" and sys.argv[1:] == ["write-and-hang"]:
    def write_and_hang(conn, job):
        send_receipt(conn, job)
        print("written", flush=True)
        time.sleep(60)  # killed here, before the job's transaction commits

    Worker("", "killed", {"send_receipt": write_and_hang}, lease=1).run()
