//! The checker: judges a fault run from records commitq does not keep. The
//! suite writes down what it enqueued (`ledger`), which keys it limited
//! (`key_limits`) and what it cancelled itself (`cancelled_by_checker`);
//! the workers write down each attempt they start with the lease commitq
//! gave it (`starts`), every outside call they attempt with its key
//! (`external_calls`), what the outside service applied
//! (`external_applied`), each child they enqueue (`child_enqueues`) and
//! their own writes (`effects`). From commitq it reads only the outcome a
//! user sees: which jobs completed, were discarded or cancelled, and its
//! key slot counters.

use std::collections::BinaryHeap;

use tokio_postgres::Client;

/// The tables of the suite's own records, and the settings of the run.
pub const SETUP: &str = "
    UPDATE commitq.config SET keep_completed = true, backoff_base = '100 milliseconds',
                              backoff_cap = '1 second';
    CREATE TABLE public.ledger (job_id bigint PRIMARY KEY, kind text NOT NULL, key text,
                                external boolean NOT NULL, child boolean NOT NULL,
                                slow boolean NOT NULL);
    CREATE TABLE public.key_limits (key text PRIMARY KEY, max_running int NOT NULL);
    CREATE TABLE public.cancelled_by_checker (job_id bigint PRIMARY KEY);
    CREATE TABLE public.starts (job_id bigint NOT NULL, attempt int NOT NULL, lease_token bigint NOT NULL,
                                pid int NOT NULL, prefetch boolean NOT NULL, mode text NOT NULL, key text,
                                at timestamptz NOT NULL, lease_until timestamptz NOT NULL,
                                ended_at timestamptz, outcome text);
    CREATE INDEX ON public.starts (job_id, lease_token);
    CREATE TABLE public.effects (job_id bigint NOT NULL, attempt int NOT NULL, lease_token bigint NOT NULL,
                                 pid int NOT NULL, at timestamptz NOT NULL);
    CREATE INDEX ON public.effects (job_id, lease_token);
    CREATE TABLE public.external_calls (job_id bigint NOT NULL, attempt int NOT NULL,
                                        lease_token bigint NOT NULL, key text NOT NULL, pid int NOT NULL,
                                        at timestamptz NOT NULL);
    CREATE INDEX ON public.external_calls (job_id, lease_token);
    CREATE TABLE public.external_applied (key text PRIMARY KEY, job_id bigint NOT NULL);
    CREATE TABLE public.child_enqueues (parent_id bigint NOT NULL, attempt int NOT NULL,
                                        lease_token bigint NOT NULL, child_id bigint NOT NULL,
                                        inserted boolean NOT NULL, at timestamptz NOT NULL);
    CREATE INDEX ON public.child_enqueues (parent_id, lease_token);
    -- When each attempt surely held its job's lease, by the workers' own
    -- records (server clock): from its start (a heartbeat that returned the
    -- lease's expiry) to the latest of its fenced writes, and at least to
    -- that expiry unless the attempt ended before it. An attempt ends
    -- (completes, fails) only after it recorded its end, so the lease ran
    -- at least that long; a killed attempt's lease runs to its expiry.
    CREATE VIEW public.held AS
    SELECT s.job_id, s.lease_token, s.key, s.at AS held_from,
           greatest(least(s.lease_until, coalesce(s.ended_at, s.lease_until)),
                    (SELECT max(e.at) FROM public.effects e
                      WHERE e.job_id = s.job_id AND e.lease_token = s.lease_token),
                    (SELECT max(c.at) FROM public.external_calls c
                      WHERE c.job_id = s.job_id AND c.lease_token = s.lease_token),
                    (SELECT max(k.at) FROM public.child_enqueues k
                      WHERE k.parent_id = s.job_id AND k.lease_token = s.lease_token)) AS held_to
      FROM public.starts s;
";

/// One line of the report; `violation` lines must read 0.
pub struct Check {
    pub name: String,
    pub value: i64,
    pub violation: bool,
}

fn info(name: &str, value: i64) -> Check {
    Check {
        name: name.into(),
        value,
        violation: false,
    }
}

fn must_be_zero(name: &str, value: i64) -> Check {
    Check {
        name: format!("**{name}**"),
        value,
        violation: true,
    }
}

/// What the suite itself knows about the run, to compare with.
pub struct Known {
    pub rolled_back: Vec<i64>,
    /// Committed jobs plus the one child each committed parent makes.
    pub expected_completed: i64,
    /// Calls of commitq.claim and commitq.complete_and_take the proxy saw.
    pub claims: i64,
    pub takes: i64,
}

pub async fn check(db: &Client, known: &Known) -> Vec<Check> {
    let q = |sql: &'static str| async move {
        db.query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get::<_, i64>(0)
    };
    let mut out = Vec::new();

    // Every job is done exactly once, and nothing is discarded.
    let completed = q("SELECT count(*) FROM commitq.finished_jobs WHERE state = 'completed'").await;
    out.push(info(
        "jobs expected to complete (committed, and the children they enqueue)",
        known.expected_completed,
    ));
    out.push(info("jobs completed", completed));
    out.push(must_be_zero(
        "completed minus expected",
        completed - known.expected_completed,
    ));
    out.push(must_be_zero(
        "lost (committed or enqueued by a job, never completed)",
        q("SELECT count(*) FROM (SELECT job_id FROM public.ledger
                                  UNION SELECT child_id FROM public.child_enqueues) l
            WHERE NOT EXISTS (SELECT 1 FROM commitq.finished_jobs f
                               WHERE f.id = l.job_id AND f.state = 'completed')")
        .await,
    ));
    out.push(info(
        "jobs the checker cancelled itself (still waiting, run_at a day ahead)",
        q(
            "SELECT count(*) FROM commitq.finished_jobs f JOIN public.cancelled_by_checker c
              ON c.job_id = f.id AND f.state = 'cancelled'",
        )
        .await,
    ));
    out.push(must_be_zero(
        "discarded or cancelled, not by the checker",
        q("SELECT count(*) FROM commitq.finished_jobs f
            WHERE f.state IN ('discarded', 'cancelled')
              AND NOT EXISTS (SELECT 1 FROM public.cancelled_by_checker c WHERE c.job_id = f.id)")
        .await,
    ));
    let unexpected: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM commitq.jobs WHERE id = ANY($1))
                  + (SELECT count(*) FROM commitq.finished_jobs WHERE id = ANY($1))
                  + (SELECT count(*) FROM public.starts WHERE job_id = ANY($1))
                  + (SELECT count(*) FROM public.effects WHERE job_id = ANY($1))
                  + (SELECT count(*) FROM public.external_calls WHERE job_id = ANY($1))
                  + (SELECT count(*) FROM public.child_enqueues WHERE parent_id = ANY($1))",
            &[&known.rolled_back],
        )
        .await
        .unwrap()
        .get(0);
    out.push(must_be_zero(
        "unexpected (anything done for a rolled-back job)",
        unexpected,
    ));

    // The job's own write: exactly once, with its completion.
    out.push(must_be_zero(
        "duplicate effects (a job's write twice)",
        q("SELECT count(*) FROM (SELECT job_id FROM public.effects GROUP BY job_id HAVING count(*) > 1) d").await,
    ));
    out.push(must_be_zero(
        "completed without its write, or write without completion",
        q(
            "SELECT (SELECT count(*) FROM commitq.finished_jobs f WHERE f.state = 'completed'
                     AND NOT EXISTS (SELECT 1 FROM public.effects e WHERE e.job_id = f.id))
                + (SELECT count(*) FROM public.effects e
                    WHERE NOT EXISTS (SELECT 1 FROM commitq.finished_jobs f
                                       WHERE f.id = e.job_id AND f.state = 'completed'))",
        )
        .await,
    ));

    // Outside calls: one stable key per job, so the service applies once.
    out.push(info(
        "outside calls attempted",
        q("SELECT count(*) FROM public.external_calls").await,
    ));
    out.push(info(
        "  of which repeated under the key of an earlier one (absorbed by it)",
        q("SELECT count(*) - count(DISTINCT key) FROM public.external_calls").await,
    ));
    out.push(must_be_zero(
        "jobs whose outside effect was applied under more than one key",
        q("SELECT count(*) FROM (
             SELECT job_id FROM (SELECT job_id, key FROM public.external_calls
                                 UNION SELECT job_id, key FROM public.external_applied) k
              GROUP BY job_id HAVING count(DISTINCT key) > 1) d")
        .await,
    ));
    out.push(must_be_zero(
        "outside effects missing for a completed job",
        q(
            "SELECT count(*) FROM public.ledger l JOIN commitq.finished_jobs f
              ON f.id = l.job_id AND f.state = 'completed'
            WHERE l.external
              AND NOT EXISTS (SELECT 1 FROM public.external_applied a WHERE a.job_id = l.job_id)",
        )
        .await,
    ));

    // Re-runs, judged from the workers' own starts and lease records.
    out.push(info(
        "re-executions (starts after a job's first)",
        q("SELECT count(*) - count(DISTINCT job_id) FROM public.starts").await,
    ));
    for (name, sql) in [
        (
            "  after a start that never recorded its end (killed, or stopped and rescued)",
            "SELECT count(*) FROM public.starts s WHERE s.ended_at IS NULL
                AND EXISTS (SELECT 1 FROM public.starts n WHERE n.job_id = s.job_id AND n.lease_token > s.lease_token)",
        ),
        (
            "  after a start that ended in an error (on purpose or by a fault)",
            "SELECT count(*) FROM public.starts s WHERE s.outcome = 'error'
                AND EXISTS (SELECT 1 FROM public.starts n WHERE n.job_id = s.job_id AND n.lease_token > s.lease_token)",
        ),
        (
            "  after a start that returned Complete (its completion was lost)",
            "SELECT count(*) FROM public.starts s WHERE s.outcome = 'complete'
                AND EXISTS (SELECT 1 FROM public.starts n WHERE n.job_id = s.job_id AND n.lease_token > s.lease_token)",
        ),
    ] {
        out.push(info(name, q(sql).await));
    }
    // Every claim of a job gives it a larger token, and a lease ends before
    // the job can be claimed again: so an attempt must be done holding its
    // lease before any attempt with a larger token begins. This also
    // catches an attempt that acts again after a newer one has finished.
    out.push(must_be_zero(
        "two starts of one job whose leases overlap in time (or come out of token order)",
        q("SELECT count(*) FROM public.held a JOIN public.held b
              ON a.job_id = b.job_id AND a.lease_token < b.lease_token
             AND a.held_to > b.held_from")
        .await,
    ));
    out.push(must_be_zero(
        "two starts of one job with the same lease token",
        q(
            "SELECT count(*) FROM (SELECT 1 FROM public.starts GROUP BY job_id, lease_token
                                  HAVING count(*) > 1) d",
        )
        .await,
    ));

    // Concurrency keys: never more holders at once than the key allows,
    // and every slot given back.
    let (over, most_1, most_2) = key_overlaps(db).await;
    out.push(must_be_zero(
        "keys held by more starts at once than their limit",
        over,
    ));
    out.push(info(
        "most starts holding one key at once (keys of limit 1)",
        most_1,
    ));
    out.push(info(
        "most starts holding one key at once (keys of limit 2)",
        most_2,
    ));
    out.push(must_be_zero(
        "keys whose slot counters are not back to zero (commitq.concurrency_keys)",
        q("SELECT count(*) FROM commitq.concurrency_keys WHERE running <> 0 OR blocked <> 0").await,
    ));

    // Idempotency keys: a job enqueues its child once across its attempts.
    out.push(info(
        "child enqueues that found the child of an earlier attempt",
        q("SELECT count(*) FROM public.child_enqueues WHERE NOT inserted").await,
    ));
    out.push(must_be_zero(
        "jobs with more than one child job",
        q("SELECT count(*) FROM (
             SELECT parent FROM (
                 SELECT parent_id AS parent, child_id AS child FROM public.child_enqueues
                 UNION SELECT (args->>'parent')::bigint, id FROM commitq.finished_jobs WHERE kind = 'fault_child'
                 UNION SELECT (args->>'parent')::bigint, id FROM commitq.jobs WHERE kind = 'fault_child') c
              GROUP BY parent HAVING count(DISTINCT child) > 1) d")
        .await,
    ));

    // Each path under faults really ran: a check over nothing proves nothing.
    let coverage = [
        (
            "starts of plain jobs (complete_in)",
            q("SELECT count(*) FROM public.starts WHERE mode = 'plain'").await,
        ),
        (
            "starts of keyed jobs (completed by the pool)",
            q("SELECT count(*) FROM public.starts WHERE mode = 'keyed'").await,
        ),
        (
            "starts of child jobs (idempotent enqueue)",
            q("SELECT count(*) FROM public.starts WHERE mode = 'child'").await,
        ),
        (
            "starts of slow jobs (longer than the lease, kept by heartbeats)",
            q("SELECT count(*) FROM public.starts JOIN public.ledger USING (job_id) WHERE slow")
                .await,
        ),
        (
            "starts in workers that prefetch",
            q("SELECT count(*) FROM public.starts WHERE prefetch").await,
        ),
        ("claim calls (seen by the proxy)", known.claims),
        ("complete_and_take calls (seen by the proxy)", known.takes),
        (
            "outside call keys used by more than one attempt (reply lost, or re-run)",
            q(
                "SELECT count(*) FROM (SELECT key FROM public.external_calls GROUP BY key
                                      HAVING count(DISTINCT lease_token) > 1) d",
            )
            .await,
        ),
    ];
    let mut unexercised = 0;
    for (name, value) in coverage {
        if value == 0 {
            unexercised += 1;
        }
        out.push(info(name, value));
    }
    out.push(must_be_zero("paths above that never ran", unexercised));
    out
}

/// Sweeps each key's lease intervals in start order: how many overlap at
/// most, against the limit the suite set. Returns the keys that went over,
/// and the most seen at once on keys of limit 1 and of limit 2.
async fn key_overlaps(db: &Client) -> (i64, i64, i64) {
    let rows = db
        .query(
            "SELECT h.key, coalesce(l.max_running, 1),
                    extract(epoch FROM h.held_from)::float8, extract(epoch FROM h.held_to)::float8
               FROM public.held h LEFT JOIN public.key_limits l ON l.key = h.key
              WHERE h.key IS NOT NULL ORDER BY h.key, h.held_from",
            &[],
        )
        .await
        .unwrap();
    let (mut over, mut most_1, mut most_2) = (0i64, 0i64, 0i64);
    let mut i = 0;
    while i < rows.len() {
        let key: String = rows[i].get(0);
        let limit: i32 = rows[i].get(1);
        // Ends of the intervals still open, as a min-heap (in microseconds).
        let mut open: BinaryHeap<std::cmp::Reverse<i64>> = BinaryHeap::new();
        let mut most = 0i64;
        while i < rows.len() && rows[i].get::<_, String>(0) == key {
            let from = (rows[i].get::<_, f64>(2) * 1e6) as i64;
            let to = (rows[i].get::<_, f64>(3) * 1e6) as i64;
            while open.peek().is_some_and(|e| e.0 <= from) {
                open.pop();
            }
            open.push(std::cmp::Reverse(to));
            most = most.max(open.len() as i64);
            i += 1;
        }
        if most > limit as i64 {
            over += 1;
        }
        match limit {
            1 => most_1 = most_1.max(most),
            _ => most_2 = most_2.max(most),
        }
    }
    (over, most_1, most_2)
}
