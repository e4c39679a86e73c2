// The example's promises, checked against a real server: run by
// tests/stacks/run.sh, which points the PG* variables (PGHOST, PGDATABASE...)
// at a fresh database with pg_commitq installed.
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { after, before, beforeEach, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { Worker, enqueue, placeOrder, sendReceipt } from './commitq_example.js';

const here = new URL('.', import.meta.url);
const db = new pg.Client({});
const workers = [];

async function waitFor(what, check, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(50);
  }
  assert.fail(`waited ${timeout / 1000} s for ${what}`);
}

function startWorker(queue, handlers, options = {}) {
  const worker = new Worker({}, queue, handlers, { name: `test-${queue}`, ...options });
  workers.push({ worker, done: worker.run() });
  return worker;
}

async function stopWorkers() {
  for (const { worker, done } of workers.splice(0)) {
    worker.stop();
    await done;
  }
}

async function receipts() {
  const { rows } = await db.query('SELECT order_id::int, attempt FROM receipts ORDER BY order_id, attempt');
  return rows.map((r) => [r.order_id, r.attempt]);
}

async function waiting(worker) {
  const { rows } = await db.query('SELECT 1 FROM commitq.waiting_workers WHERE worker = $1', [worker.name]);
  return rows.length === 1;
}

async function finished(queue) {
  const { rows } = await db.query(
    'SELECT state::text, attempt, errors FROM commitq.finished_jobs WHERE queue = $1', [queue]);
  return rows;
}

async function enqueueCommitted(queue, orderId) {
  await db.query('BEGIN');
  await enqueue(db, queue, 'send_receipt', { order_id: orderId });
  await db.query('COMMIT');
}

before(async () => {
  await db.connect();
  await db.query('CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, email text NOT NULL)');
  await db.query('CREATE TABLE IF NOT EXISTS receipts (order_id bigint NOT NULL, attempt int NOT NULL)');
  // Short backoffs so a retry comes within the test; finished jobs kept to read their history.
  await db.query("UPDATE commitq.config SET backoff_base = '50 ms', backoff_cap = '200 ms', keep_completed = true");
});

beforeEach(async () => {
  await stopWorkers();
  await db.query(`TRUNCATE orders, receipts, commitq.jobs, commitq.finished_jobs, commitq.waiting_workers,
                           commitq.idempotency_keys`);
});

after(async () => {
  await stopWorkers();
  await db.end();
});

test('a committed job runs exactly once, woken by LISTEN', async () => {
  // A minute of polling: only the notification can bring the job in time.
  const worker = startWorker('mail', { send_receipt: sendReceipt }, { poll: 60 });
  await waitFor('the worker to wait', () => waiting(worker));
  await placeOrder(db, 1, 'ada@example.com');
  await waitFor('the job to finish', async () => (await finished('mail')).length > 0, 5_000);
  await sleep(300); // room for a second run, which must not come
  assert.deepEqual(await receipts(), [[1, 1]]);
  assert.deepEqual((await finished('mail')).map((j) => [j.state, j.attempt]), [['completed', 1]]);
});

test('a job enqueued in a rolled-back transaction never runs', async () => {
  const worker = startWorker('mail', { send_receipt: sendReceipt }, { poll: 60 });
  await waitFor('the worker to wait', () => waiting(worker));
  await db.query('BEGIN');
  await db.query("INSERT INTO orders (id, email) VALUES (2, 'bob@example.com')");
  await enqueue(db, 'mail', 'send_receipt', { order_id: 2 });
  await db.query('ROLLBACK');
  assert.equal((await db.query('SELECT * FROM commitq.jobs')).rowCount, 0);
  await placeOrder(db, 3, 'cy@example.com'); // enqueued after it: runs after it, had it existed
  await waitFor('the later job', async () => (await receipts()).length > 0, 5_000);
  await sleep(300);
  assert.deepEqual(await receipts(), [[3, 1]]);
});

test('a handler that throws gets its job failed and retried', async () => {
  startWorker('flaky', {
    send_receipt: async (conn, job) => {
      if (job.attempt === 1) throw new Error('mail provider down');
      await sendReceipt(conn, job);
    },
  }, { poll: 0.5 });
  await enqueueCommitted('flaky', 4);
  await waitFor('the retry to finish', async () => (await finished('flaky')).length > 0);
  const [job] = await finished('flaky');
  assert.deepEqual([job.state, job.attempt], ['completed', 2]);
  assert.deepEqual(job.errors.map((e) => e.attempt), [1]);
  assert.match(job.errors[0].error, /mail provider down/);
  assert.deepEqual(await receipts(), [[4, 2]]);
});

test("a handler's writes roll back with a failed attempt", async () => {
  startWorker('partial', {
    send_receipt: async (conn, job) => {
      await sendReceipt(conn, job); // written in the job's transaction...
      if (job.attempt === 1) throw new Error('crashed after writing'); // ...so gone with it
    },
  }, { poll: 0.5 });
  await enqueueCommitted('partial', 5);
  await waitFor('the retry to finish', async () => (await finished('partial')).length > 0);
  assert.deepEqual(await receipts(), [[5, 2]]);
});

test('a killed worker leaves no write, and its job is retried', async () => {
  await enqueueCommitted('killed', 6);
  const child = fork(new URL('hanging_worker.js', here));
  try {
    const [message] = await once(child, 'message');
    assert.equal(message, 'written');
  } finally {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  assert.deepEqual(await receipts(), []);
  // Its lease (1 s) runs out without heartbeats; maintain() puts the job back
  // (or the engine does first, where the server preloads pg_commitq).
  await waitFor('the rescue', async () => {
    await db.query('SELECT commitq.maintain()');
    const { rows } = await db.query("SELECT state FROM commitq.jobs WHERE queue = 'killed'");
    return rows.length === 1 && rows[0].state !== 'running';
  });
  startWorker('killed', { send_receipt: sendReceipt }, { poll: 0.5 });
  await waitFor('the retry to finish', async () => (await finished('killed')).length > 0);
  assert.deepEqual(await receipts(), [[6, 2]]);
});

test('heartbeats keep the lease of a long job', async () => {
  startWorker('slow', {
    send_receipt: async (conn, job) => {
      await sleep(4_500); // more than twice the lease
      await sendReceipt(conn, job);
    },
  }, { lease: 2, poll: 0.5 });
  await enqueueCommitted('slow', 7);
  await waitFor('the job to finish', async () => (await finished('slow')).length > 0);
  assert.deepEqual((await finished('slow')).map((j) => [j.state, j.attempt]), [['completed', 1]]);
  assert.deepEqual(await receipts(), [[7, 1]]);
});

test('a stopped worker stops waiting', async () => {
  const worker = new Worker({}, 'idle', {}, { name: 'test-idle', poll: 60 });
  const done = worker.run();
  await waitFor('the worker to wait', () => waiting(worker));
  worker.stop();
  await done;
  assert.equal(await waiting(worker), false);
});

test('the guide shows this example', () => {
  const example = readFileSync(new URL('commitq_example.js', here), 'utf8');
  const guide = readFileSync(new URL('../../docs/node.md', here), 'utf8');
  assert.ok(guide.includes('```js\n' + example + '```'), 'docs/node.md must show commitq_example.js whole');
});
