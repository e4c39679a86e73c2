"""commitq from Python with psycopg 3: a producer that enqueues in the
application's own transaction, and a worker that runs each job in a
transaction of its own and completes the job in that same transaction."""
import os
import socket
import threading
import time
from collections import namedtuple

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

LEASE_LOST = ("CQ102", "CQ103")  # stale or expired lease: the job is no longer ours
OPTIONS = ("priority", "run_at", "max_attempts", "idempotency_key", "concurrency_key",
           "depends_on", "on_duplicate")
Job = namedtuple("Job", "id kind args attempt")


def enqueue(conn, queue, kind, args, **options):
    """Enqueue a job in conn's open transaction: workers see it when that
    transaction commits, and it never exists if it rolls back."""
    named = "".join(f", {name} => %({name})s" for name in options if name in OPTIONS)
    return conn.execute(
        f"SELECT job_id FROM commitq.enqueue(%(queue)s, %(kind)s, %(args)s{named})",
        {**options, "queue": queue, "kind": kind, "args": Jsonb(args)}).fetchone()[0]


def place_order(conn, order_id, email):
    """The producer: the order and its receipt job commit together."""
    with conn.transaction():
        conn.execute("INSERT INTO orders (id, email) VALUES (%s, %s)", (order_id, email))
        enqueue(conn, "mail", "send_receipt", {"order_id": order_id}, idempotency_key=f"receipt-{order_id}")


def send_receipt(conn, job):
    """A handler: its writes go through conn, in the transaction that completes the job."""
    conn.execute("INSERT INTO receipts (order_id, attempt) VALUES (%s, %s)", (job.args["order_id"], job.attempt))


class Worker:
    def __init__(self, conninfo, queue, handlers, name=None, batch=10, lease=30.0, poll=1.0):
        self.conninfo, self.queue, self.handlers = conninfo, queue, handlers
        self.name = name or f"py-{socket.gethostname()}-{os.getpid()}"
        self.batch, self.lease, self.poll = batch, lease, poll
        self.stopping = threading.Event()

    def stop(self):
        self.stopping.set()

    def run(self):
        """Claim and run jobs until stop(). Three connections: one runs the jobs,
        one heartbeats while a job runs, one only listens (so that no other
        statement reads a notification off it before the wait does)."""
        connect = lambda: psycopg.connect(self.conninfo, autocommit=True)
        with connect() as conn, connect() as beat, connect() as listen:
            # LISTEN before the first claim. The claims run on another connection,
            # which does not listen, so after an empty claim the worker registers
            # itself as waiting (start_waiting) and claims once more: a commit of a
            # job of this queue then notifies it, and one committed in between is
            # found by that second claim.
            listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"commitq:{self.queue}")))
            registered = False
            try:
                while not self.stopping.is_set():
                    jobs = conn.execute(
                        "SELECT job_id, kind, args, attempt, lease_token"
                        " FROM commitq.claim(%s, %s, %s, make_interval(secs => %s))",
                        (self.queue, self.name, self.batch, self.lease)).fetchall()
                    for job_id, kind, args, attempt, token in jobs:
                        self.run_job(conn, beat, Job(job_id, kind, args, attempt), token)
                    if jobs:
                        registered = False  # a claim that found work clears it
                    elif not registered:
                        conn.execute("SELECT commitq.start_waiting(%s, %s)", (self.queue, self.name))
                        registered = True
                    else:
                        self.wait(listen)
                        registered = False  # register again: maintain prunes old entries
            finally:
                conn.execute("SELECT commitq.stop_waiting(%s, %s)", (self.queue, self.name))

    def wait(self, listen):
        """Until a notification, stop(), or poll seconds: the fallback that also
        picks up retries whose backoff has passed (they send no notification)."""
        deadline = time.monotonic() + self.poll
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if any(True for _ in listen.notifies(timeout=min(0.5, self.poll), stop_after=1)):
                return

    def run_job(self, conn, beat, job, token):
        done = threading.Event()

        def heartbeat():  # on its own connection, so each one commits at once
            while not done.wait(self.lease / 3):
                try:
                    beat.execute("SELECT commitq.heartbeat(%s, %s)", (job.id, token))
                except psycopg.Error:
                    return  # lease lost: the complete will be refused too

        beating = threading.Thread(target=heartbeat, daemon=True)
        beating.start()
        try:
            with conn.transaction():  # the handler's writes and the completion commit together
                self.handlers[job.kind](conn, job)
                conn.execute("SELECT commitq.complete(%s, %s)", (job.id, token))
        except Exception as error:  # rolled back: nothing of this attempt stays
            if getattr(error, "sqlstate", None) not in LEASE_LOST:
                try:  # retried after an exponential backoff, until max_attempts
                    conn.execute("SELECT commitq.fail(%s, %s, %s)", (job.id, token, repr(error)))
                except psycopg.Error as lost:
                    if lost.sqlstate not in LEASE_LOST:
                        raise
        finally:
            done.set()
            beating.join()


if __name__ == "__main__":  # PGHOST, PGDATABASE... say where the database is, as for psql
    Worker("", "mail", {"send_receipt": send_receipt}).run()


class WaitingWorker(Worker):
    """The same worker with no LISTEN: CALL commitq.claim_wait claims, and when
    the queue is empty waits inside the database until a commit makes a job
    available (woken through shared memory when pg_commitq is preloaded, else
    polling every 100 ms). One statement, so it works through PgBouncer in
    transaction pooling mode, where LISTEN does not."""

    def run(self):
        connect = lambda: psycopg.connect(self.conninfo, autocommit=True)
        with connect() as conn, connect() as beat:
            while not self.stopping.is_set():
                # A CALL of its own (autocommit): it commits between attempts.
                # Waits at most self.poll, so stop() is seen within that.
                try:
                    (jobs,) = conn.execute(
                        "CALL commitq.claim_wait(%s, %s, %s, make_interval(secs => %s),"
                        " make_interval(secs => %s))",
                        (self.queue, self.name, self.batch, self.lease, self.poll)).fetchone()
                except psycopg.errors.QueryCanceled:
                    if self.stopping.is_set():
                        return  # cancelled to stop now (pg_cancel_backend)
                    raise
                for j in jobs:  # jsonb: a list of dicts
                    job = Job(j["job_id"], j["kind"], j["args"], j["attempt"])
                    self.run_job(conn, beat, job, j["lease_token"])
