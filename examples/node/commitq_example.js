// commitq from Node with pg (node-postgres): a producer that enqueues in the
// application's own transaction, and a worker that runs each job in a
// transaction of its own and completes the job in that same transaction.
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import pg from 'pg';

const LEASE_LOST = new Set(['CQ102', 'CQ103']); // stale or expired lease: the job is no longer ours
const OPTIONS = ['priority', 'run_at', 'max_attempts', 'idempotency_key', 'concurrency_key',
  'depends_on', 'on_duplicate'];

// Enqueue a job in db's open transaction: workers see it when that
// transaction commits, and it never exists if it rolls back.
export async function enqueue(db, queue, kind, args, options = {}) {
  const names = OPTIONS.filter((name) => options[name] !== undefined);
  const named = names.map((name, i) => `, ${name} => $${i + 4}`).join('');
  const { rows } = await db.query(
    `SELECT job_id FROM commitq.enqueue($1, $2, $3::jsonb${named})`,
    [queue, kind, JSON.stringify(args), ...names.map((name) => options[name])]);
  return rows[0].job_id; // a bigint, as a string
}

// The producer: the order and its receipt job commit together.
export async function placeOrder(db, orderId, email) {
  await db.query('BEGIN');
  try {
    await db.query('INSERT INTO orders (id, email) VALUES ($1, $2)', [orderId, email]);
    await enqueue(db, 'mail', 'send_receipt', { order_id: orderId }, { idempotency_key: `receipt-${orderId}` });
    await db.query('COMMIT');
  } catch (error) {
    await db.query('ROLLBACK');
    throw error;
  }
}

// A handler: its writes go through db, in the transaction that completes the job.
export async function sendReceipt(db, job) {
  await db.query('INSERT INTO receipts (order_id, attempt) VALUES ($1, $2)', [job.args.order_id, job.attempt]);
}

export class Worker {
  constructor(config, queue, handlers, { name, batch = 10, lease = 30, poll = 1 } = {}) {
    Object.assign(this, { config, queue, handlers, batch, lease, poll });
    this.name = name ?? `node-${os.hostname()}-${process.pid}`;
    this.stopping = false;
    this.wake = () => {};
  }

  stop() {
    this.stopping = true;
    this.wake();
  }

  // Claim and run jobs until stop(). Two connections: one LISTENs and runs
  // the jobs, one heartbeats while a job runs (the other is in its transaction).
  async run() {
    const conn = new pg.Client(this.config);
    const beat = new pg.Client(this.config);
    await conn.connect();
    await beat.connect();
    let notified = false;
    conn.on('notification', () => { notified = true; this.wake(); });
    try {
      // LISTEN before the first claim: an empty claim registers this worker
      // as waiting, and a commit of a job of this queue then notifies it.
      await conn.query(`LISTEN ${conn.escapeIdentifier(`commitq:${this.queue}`)}`);
      while (!this.stopping) {
        notified = false; // a notification that comes during the claim still counts
        const { rows } = await conn.query(
          `SELECT job_id, kind, args, attempt, lease_token
             FROM commitq.claim($1, $2, $3, make_interval(secs => $4))`,
          [this.queue, this.name, this.batch, this.lease]);
        for (const job of rows) await this.runJob(conn, beat, job);
        // Nothing claimed: wait for a notification, stop(), or poll seconds, the
        // fallback that also picks up retries whose backoff has passed.
        if (rows.length === 0 && !notified && !this.stopping) {
          await new Promise((resolve) => {
            const timer = setTimeout(resolve, this.poll * 1000);
            this.wake = () => { clearTimeout(timer); resolve(); };
          });
          this.wake = () => {};
        }
      }
    } finally {
      await conn.query('SELECT commitq.stop_waiting($1, $2)', [this.queue, this.name]);
      await Promise.all([conn.end(), beat.end()]);
    }
  }

  async runJob(conn, beat, { job_id: id, kind, args, attempt, lease_token: token }) {
    const heartbeats = setInterval(() => {
      // A lost lease shows at the complete, which is then refused.
      beat.query('SELECT commitq.heartbeat($1, $2)', [id, token]).catch(() => {});
    }, (this.lease * 1000) / 3);
    try {
      await conn.query('BEGIN'); // the handler's writes and the completion commit together
      await this.handlers[kind](conn, { id, kind, args, attempt });
      await conn.query('SELECT commitq.complete($1, $2)', [id, token]);
      await conn.query('COMMIT');
    } catch (error) {
      await conn.query('ROLLBACK'); // nothing of this attempt stays
      if (!LEASE_LOST.has(error.code)) {
        // Retried after an exponential backoff, until max_attempts.
        await conn.query('SELECT commitq.fail($1, $2, $3)', [id, token, String(error)])
          .catch((lost) => { if (!LEASE_LOST.has(lost.code)) throw lost; });
      }
    } finally {
      clearInterval(heartbeats);
    }
  }
}

// `node commitq_example.js` runs a worker; PGHOST, PGDATABASE... say where the database is.
if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  await new Worker({}, 'mail', { send_receipt: sendReceipt }).run();
}
